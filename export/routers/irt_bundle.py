"""An exported ``irt`` bundle (the embedded one too) as a trained router: ``evaluate`` and
``profile fit`` take a bundle wherever they take a router folder, and score it through the
bundle's own ONNX graph, exactly as the daemon computes it (``agent.profile_router``).

Its own module: the adapter between the daemon's bundle and the pipeline's router
interface, opened by the kind registry's ``load_router`` when a folder has a manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export.errors import PipelineError
from export.routers.base import RouterMeta, TrainedRouter
from export.routers.irt import IrtRouter


class IrtBundleRouter(IrtRouter):
    """An exported ``irt`` bundle (the embedded one too) scored like a trained router, so
    ``evaluate`` and ``profile fit`` take a bundle wherever they take a router folder.
    Scores come from the bundle's own ONNX graph, exactly as the daemon computes them."""

    def __init__(self, meta: RouterMeta, bundle: Any) -> None:
        TrainedRouter.__init__(self, meta)
        self.bundle = bundle
        self.profiles = bundle.shipped
        self.layers = int(meta.extra.get("layers", 0))

    def features(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.bundle.features_batch(texts)  # type: ignore[no-any-return]

    def save(self, folder: Path) -> None:
        raise PipelineError("a bundle is written by `edgeroute export` or `profile fit`")

    @classmethod
    def open(cls, folder: Path, threads: int = 2) -> IrtBundleRouter:
        from agent.profile_router import IrtBundle

        b = IrtBundle.load(Path(folder), threads)
        r = b.manifest.raw.get("router") or {}
        meta = RouterMeta(
            kind="irt", experts=list(b.shipped.profiles), metric="correct", temperature=0.1,
            seed=int(r.get("seed", 0)), table_sha256=str(r.get("table_sha256", "")),
            train_queries=int(r.get("train_queries", 0)), datasets=list(r.get("datasets", [])),
            max_length=b.manifest.max_length,
            label_spec={"metric": "correct", "temperature": 0.1},
            test_fraction=float(r.get("test_fraction", 0.2)),
            extra={"layers": r.get("layers"), "bundle": str(folder)})
        return cls(meta, b)
