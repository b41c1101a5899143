"""The daemon's ability-profile router: scores EVERY configured expert.

An ``irt`` bundle (``edgeroute export`` of an ``irt`` router) holds::

    manifest.json   kind "irt", encoder_id, dim, max_length, sha256 of each file
    model.onnx      query -> u (K floats) and d (difficulty): the encoder and query tower
    tokenizer.json  the encoder's fast tokenizer
    profiles.json   one ability profile per shipped expert (``agent.profiles``)

A decision is one encoder pass plus a dot product per expert, so its latency is the
encoder's however many experts there are. Each configured expert's profile is resolved at
load (``agent.profiles.resolve``): the daemon routes any expert a user configures, with a
prior and a hint for the ones it knows nothing about.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import BundleError
from agent.experts.info import ExpertInfo, describe_experts
from agent.model_names import ModelNames
from agent.profiles import (
    PROFILES_NAME,
    ProfileSet,
    Resolved,
    read_device_profiles,
    resolve,
    sigmoid,
)
from agent.router_bundle import WARMUP_TEXT, BundleManifest, OnnxScorer
from agent.routing import QueryFeatures, Scoring

log = logging.getLogger("edgeroute.router")

KIND = "irt"


def bundle_kind(manifest: BundleManifest) -> str:
    return str(manifest.raw.get("kind", "classifier"))


@dataclass(frozen=True)
class IrtBundle:
    """A verified ``irt`` bundle: the scorer of u(q), d(q) and the shipped profiles."""

    path: Path
    manifest: BundleManifest
    scorer: OnnxScorer
    shipped: ProfileSet

    @classmethod
    def load(cls, bundle: Path, threads: int) -> IrtBundle:
        bundle = Path(bundle)
        manifest = BundleManifest.read(bundle)
        if bundle_kind(manifest) != KIND:
            raise BundleError(f"router bundle {bundle} is a {bundle_kind(manifest)!r} bundle, "
                              f"not {KIND!r}")
        if PROFILES_NAME not in manifest.files:
            raise BundleError(f"router bundle {bundle}: manifest has no hash for "
                              f"{PROFILES_NAME}; re-export the bundle")
        manifest.verify()
        shipped = ProfileSet.read(bundle / PROFILES_NAME)
        if shipped.encoder_id != manifest.raw.get("encoder_id"):
            raise BundleError(f"router bundle {bundle}: {PROFILES_NAME} was fitted for another "
                              "encoder than model.onnx; re-export or refit the profiles")
        try:
            scorer = OnnxScorer(bundle / "model.onnx", bundle / "tokenizer.json",
                                manifest.max_length, threads)
            out = cls(bundle, manifest, scorer, shipped)
            u, _ = out.features(WARMUP_TEXT)  # first run allocates; pay it now
        except BundleError:
            raise
        except Exception as exc:  # onnxruntime/tokenizers raise their own, untyped errors
            raise BundleError(f"router bundle {bundle}: cannot load model or tokenizer "
                              f"({type(exc).__name__}: {exc}); re-export the bundle") from exc
        if u.shape != (shipped.dim,):
            raise BundleError(f"router bundle {bundle}: model gives {u.shape} features, "
                              f"profiles have {shipped.dim}; re-export the bundle")
        return out

    def features(self, text: str) -> tuple[np.ndarray, float]:
        u, d = self.scorer.session.run(None, self.scorer.feeds(text))[:2]
        return np.asarray(u[0], dtype=np.float64), float(np.asarray(d).reshape(-1)[0])

    def features_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        pairs = [self.features(t) for t in texts]
        return (np.array([p[0] for p in pairs]).reshape(len(texts), self.shipped.dim),
                np.array([p[1] for p in pairs]))


class ProfileRouter:
    """The Router protocol over an ``irt`` bundle and the configured experts' profiles."""

    mode = "profile"

    def __init__(self, bundle: IrtBundle, resolved: dict[str, Resolved],
                 device_note: str | None = None) -> None:
        self.bundle = bundle
        self.resolved = resolved
        self.experts = tuple(resolved)
        self.device_note = device_note
        self.loaded_at = time.time()
        self._theta = np.array([r.profile.theta for r in resolved.values()], dtype=np.float64)
        self._bias = np.array([r.profile.bias for r in resolved.values()], dtype=np.float64)
        self.lengths = {n: r.length for n, r in resolved.items()}

    @classmethod
    def load(cls, bundle: Path, experts: list[ExpertInfo], threads: int,
             device_profiles: Path | None = None,
             fleet_profiles: Path | None = None) -> ProfileRouter:
        """Verify and load the bundle, resolve every expert's profile. Raises BundleError.
        ``fleet_profiles``: the folder of profiles fetched from the fleet, one file per
        encoder (``agent.fleet_profiles``)."""
        irt = IrtBundle.load(bundle, threads)
        device, note = ({}, None) if device_profiles is None else read_device_profiles(
            device_profiles, irt.shipped.encoder_id)
        if note:
            log.warning("%s", note)
        names = ModelNames.of()
        fleet, _ = ({}, None) if fleet_profiles is None else read_device_profiles(
            fleet_profiles / f"{irt.shipped.encoder_id}.json", irt.shipped.encoder_id)
        resolved = {e.name: resolve(e, irt.shipped, device, fleet, names) for e in experts}
        for name, r in resolved.items():
            if r.source == "prior":
                log.warning("expert %s has no ability profile: routed with the prior %r "
                            "(median %s profile); %s", name, r.profile.name, r.profile.kind,
                            r.note)
        return cls(irt, resolved, note)

    @property
    def path(self) -> Path:
        return self.bundle.path

    def scores(self, text: str) -> dict[str, float]:
        return self.score(text).scores

    def score(self, text: str) -> Scoring:
        u, d = self.bundle.features(text)
        z = self._theta @ u + self._bias - d
        scores = dict(zip(self.experts, sigmoid(z).tolist(), strict=True))
        features = QueryFeatures(tuple(u.tolist()), d, self.bundle.shipped.encoder_id)
        return Scoring(scores, features, self.lengths)

    def describe(self) -> dict[str, Any]:
        m = self.bundle.manifest
        out: dict[str, Any] = {
            "mode": self.mode,
            "bundle": str(self.bundle.path),
            "encoder": m.raw.get("encoder"),
            "precision": m.raw.get("precision"),
            "max_length": m.max_length,
            "threads": self.bundle.scorer.threads,
            "model_sha256": m.files["model.onnx"],
            "created_at": m.raw.get("created_at"),
            "shipped_profiles": len(self.bundle.shipped.profiles),
            "experts": {n: r.describe() for n, r in self.resolved.items()},
        }
        if self.device_note:
            out["device_profiles_note"] = self.device_note
        return out


def open_bundle(bundle: Path, settings: Any, threads: int,
                names: list[str] | None = None) -> Any:
    """A RouterHolder over ``bundle`` for the experts ``names`` (default: every configured
    one): an ``irt`` bundle scores them through profiles; a classifier bundle must score
    exactly them."""
    from agent.profiles import DEVICE_PROFILES_NAME, FLEET_PROFILES_DIR
    from agent.router_bundle import OnnxRouter, RouterHolder

    known = describe_experts(settings)
    names = list(known) if names is None else list(names)
    experts = [known.get(n) or ExpertInfo(n, "cloud", n) for n in names]
    device = Path(settings.paths.data_dir) / DEVICE_PROFILES_NAME
    fleet = Path(settings.paths.data_dir) / FLEET_PROFILES_DIR

    def loader(path: Path) -> Any:
        if bundle_kind(BundleManifest.read(path)) == KIND:
            return ProfileRouter.load(path, experts, threads, device, fleet)
        return OnnxRouter.load(path, names, threads)

    return RouterHolder(loader(Path(bundle)), loader, Path(bundle))
