"""Where the query features u(q), d(q) of an ``irt`` router come from, and where refitted
profiles go: a trained router folder (the torch encoder, cached embeddings) or an exported
bundle (the daemon's own ONNX graph), opened through the kind registry's ``load_router``.

Its own module because ``profile fit`` (abilities) and ``profile lengths`` (answer
lengths) both refit profiles on these features; neither stage imports the other for it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.profiles import ProfileSet
from export.errors import PipelineError


@dataclass(frozen=True)
class FeatureSource:
    """Where u(q), d(q) come from: a trained irt router folder (torch encoder, cached) or an
    exported irt bundle (the daemon's own ONNX graph), both through ``load_router``."""

    path: Path
    router: Any  # export.routers.irt.IrtRouter or irt_bundle.IrtBundleRouter

    @property
    def profiles(self) -> ProfileSet:
        return self.router.profiles  # type: ignore[no-any-return]

    @property
    def is_bundle(self) -> bool:
        return (self.path / "manifest.json").is_file()

    @classmethod
    def open(cls, path: Path) -> FeatureSource:
        from export.routers.irt import IrtRouter
        from export.routers.kinds import load_router

        r = load_router(Path(path))
        if not isinstance(r, IrtRouter):
            raise PipelineError(f"{path} is a {r.kind!r} router; profiles need an irt router "
                                "(`edgeroute train --router irt`) or an irt bundle")
        return cls(Path(path), r)

    def features(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.router.features(texts)  # type: ignore[no-any-return]

    def write(self, profiles: ProfileSet, out: Path) -> None:
        """A copy of the router or bundle with ``profiles`` in place of its own."""
        out = Path(out)
        if out.resolve() != self.path.resolve():
            if out.exists():
                shutil.rmtree(out)
            shutil.copytree(self.path, out)
        profiles.write(out / "profiles.json")
        if self.is_bundle:
            _rehash_manifest(out)
        else:
            meta_path = out / "router.json"
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            meta["experts"] = list(profiles.profiles)
            meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n",
                                 encoding="utf-8")


def _rehash_manifest(bundle: Path) -> None:
    """The bundle's manifest again, through the daemon's own type: new profiles.json hash,
    the profiled experts; provenance kept."""
    from agent.router_bundle import BundleManifest

    old = BundleManifest.read(bundle)
    names = list(ProfileSet.read(bundle / "profiles.json").profiles)
    kept = {k: v for k, v in old.raw.items()
            if k not in ("files", "experts", "format", "metric", "max_length")}
    BundleManifest.create(bundle, experts=names, metric=old.metric, max_length=old.max_length,
                          provenance=kept).write()
