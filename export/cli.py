"""Pipeline sub-commands of ``edgeroute``. Cheap to import: each command imports its
stage's module (and so torch) only when it runs.

Each stage module that offers a command exposes ``add_arguments(parser)`` and
``run(args) -> int``; this file only lists them.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

# (command, module, help). A module missing here is a stage not yet built.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("collect", "export.collect", "prompt experts with datasets; write the expert table"),
    ("table", "export.importers", "expert tables: import public routing tables"),
    ("train", "export.train", "train a router on an expert table"),
    ("evaluate", "export.evaluate", "evaluate routers and baselines on an expert table"),
    ("export", "export.onnx_export", "export a trained router to an ONNX int8 bundle"),
)


def _lazy(module: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        return int(importlib.import_module(module).run(args) or 0)

    return run


def register(sub: Any) -> None:
    for name, module, help_text in COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue  # stage not built yet
            raise
        parser = sub.add_parser(name, help=help_text)
        mod.add_arguments(parser)
        parser.set_defaults(func=_lazy(module))
