"""The router-kind registry: per kind, how it trains, how it loads, its training defaults
and what it supports. ``edgeroute train --router``, :func:`load_router`, :func:`read_meta`
and ``edgeroute export`` read this one table and nothing else.

Adding a kind is one entry in :data:`KINDS`, plus its module:

1. ``export/routers/<kind>.py`` (torch imported inside functions only) with
   - a :class:`~export.routers.base.TrainedRouter` subclass with ``save(folder)`` and a
     classmethod ``load(folder, meta)``;
   - ``fit(data: TrainingSet) -> (router, log_dict)`` (``export.routers.training``):
     train on ``data.train_idx`` (and ``data.val_idx`` for early stopping; empty when the
     entry says ``validation=False``). ``data`` carries the soft labels and mask, the metric
     values, the whole pivoted table (``data.matrix``, for kinds that learn from raw
     outcomes), the loop's :class:`~export.routers.training.FitConfig` and the table's
     path. Put kind-specific provenance in ``data.meta.extra`` (written to router.json).
2. ``KINDS["<kind>"] = RouterKind("<kind>", "export.routers.<kind>:<RouterClass>",
   FitDefaults(...), ...)``.

Then ``edgeroute train --router <kind>`` trains it, and evaluate, calibrate and the report
load it through :func:`load_router`.

The registry sits above ``export.routers.base`` (router.json and the router interface):
the kind modules import base, and base imports neither them nor this table.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.errors import PipelineError
from export.routers.base import RouterMeta, TrainedRouter

if TYPE_CHECKING:
    from export.routers.training import TrainingSet


@dataclass(frozen=True)
class FitDefaults:
    """Training-loop defaults of a kind (``--epochs`` etc. override them)."""

    epochs: int
    batch_size: int
    lr: float
    patience: int


@dataclass(frozen=True)
class RouterKind:
    """One kind of router. ``router`` is ``"module:Class"``; the module's ``fit`` trains it.
    Nothing is imported until a router of this kind trains or loads."""

    name: str
    router: str
    defaults: FitDefaults
    validation: bool = True  # carve a validation split off the training queries
    layers: bool = False  # accepts --layers (encoder depth)
    onnx: bool = False  # `edgeroute export` can turn it into a daemon bundle

    @property
    def module(self) -> str:
        return self.router.partition(":")[0]

    def router_class(self) -> type[TrainedRouter]:
        cls: type[TrainedRouter] = getattr(
            importlib.import_module(self.module), self.router.partition(":")[2]
        )
        return cls

    def load(self, folder: Path, meta: RouterMeta) -> TrainedRouter:
        loader: Any = self.router_class()
        router: TrainedRouter = loader.load(Path(folder), meta)
        return router

    def fit(self, data: TrainingSet) -> tuple[TrainedRouter, dict[str, Any]]:
        result: tuple[TrainedRouter, dict[str, Any]] = importlib.import_module(
            self.module
        ).fit(data)
        return result


KINDS: dict[str, RouterKind] = {
    k.name: k
    for k in (
        RouterKind("mlp", "export.routers.mlp:MlpRouter", FitDefaults(60, 32, 1e-3, 4)),
        RouterKind(
            "bert", "export.routers.bert:BertRouter", FitDefaults(4, 16, 1e-4, 1),
            layers=True, onnx=True,
        ),
        RouterKind(
            "knn", "export.routers.knn:KnnRouter", FitDefaults(0, 0, 0.0, 0), validation=False
        ),
        RouterKind(
            "irt", "export.routers.irt:IrtRouter", FitDefaults(300, 256, 2e-3, 15),
            layers=True, onnx=True,
        ),
    )
}


def router_kind(name: str) -> RouterKind:
    """The registry entry of ``name``; a PipelineError naming the known kinds otherwise."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise PipelineError(
            f"unknown router kind {name!r}; this version knows {list(KINDS)}"
        ) from None


def exportable() -> list[str]:
    """Kinds ``edgeroute export`` can bundle for the daemon."""
    return [k for k, v in KINDS.items() if v.onnx]


def read_meta(folder: Path) -> RouterMeta:
    """router.json of ``folder`` (``RouterMeta.read``), its kind checked against this
    registry: what every stage reads a trained router's metadata with."""
    meta = RouterMeta.read(folder)
    if meta.kind not in KINDS:
        raise PipelineError(
            f"{Path(folder) / 'router.json'}: unsupported kind {meta.kind!r} "
            f"(this version reads kinds {list(KINDS)})"
        )
    return meta


def load_router(folder: Path) -> TrainedRouter:
    """Load any trained router folder (imports torch only for kinds that need it), or an
    exported ``irt`` bundle (the embedded one too): profiles make it a router of its own."""
    folder = Path(folder)
    if (folder / "manifest.json").is_file() and not (folder / "router.json").is_file():
        from export.routers.irt_bundle import IrtBundleRouter

        return IrtBundleRouter.open(folder)
    meta = read_meta(folder)
    return router_kind(meta.kind).load(folder, meta)
