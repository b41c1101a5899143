"""Pipeline sub-commands of ``edgeroute``, joined to the daemon's CLI through the
``edgeroute.commands`` entry-point group (``pyproject.toml``), the way ``llm`` and
``pytest`` plugins join theirs.

Why entry points: the dependency points one way. ``agent.cli`` lists the group's names
(no import), and loads one of the objects below only when its command runs or the
top-level ``--help`` lists it; a stage module (and torch behind it) loads only when its
command parses its arguments. ``edgeroute serve`` imports nothing from ``export``.

Each stage module exposes ``add_arguments(parser)`` and ``run(args) -> int``; ``run``
builds the stage's typed config from the parsed arguments (the one place the CLI meets
the stage) and calls the stage function, which tests call with a config directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, TypeVar

from export.errors import PipelineError

C = TypeVar("C")


@dataclass(frozen=True)
class StageCommand:
    """One pipeline command: what ``agent.cli`` expects of an ``edgeroute.commands`` entry."""

    module: str
    help: str
    user_errors: tuple[type[BaseException], ...] = (PipelineError,)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        importlib.import_module(self.module).add_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        return int(importlib.import_module(self.module).run(args) or 0)


def stage_config(cls: type[C], args: argparse.Namespace) -> C:
    """A stage's typed config from its parsed arguments: each dataclass field takes the
    argument with the same ``dest`` (lists become tuples); fields with no such argument
    keep their defaults. Argument names and field names are the same by design."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if hasattr(args, f.name):
            v = getattr(args, f.name)
            values[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**values)


collect = StageCommand(
    "export.collect", "prompt experts with datasets; write the expert table"
)
table = StageCommand("export.table_cli", "expert tables: import public routing tables")
train = StageCommand("export.train", "train a router on an expert table")
evaluate = StageCommand("export.evaluate", "evaluate routers and baselines on an expert table")
replay = StageCommand("export.route_replay",
                      "a table's test split through a daemon's /v1/route, held to evaluate")
calibrate = StageCommand(
    "export.calibrate", "pick usd_per_correct for a target cloud share/quality (validation)"
)
export = StageCommand("export.onnx_export", "export a trained router to an ONNX int8 bundle")
profile = StageCommand("export.profile_fit", "fit experts' ability profiles from a table")
experts = StageCommand("export.experts_calibrate",
                       "list shipped ability profiles; calibrate a configured expert's own")
