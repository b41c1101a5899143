"""IRT router: a frozen MiniLM encoder, a small query tower, and one ability profile per
expert (``agent.profiles``). P(e correct | q) = sigmoid(u(q) . theta_e + b_e - d(q)).

The parts live in modules of their own: the encoder and its embedding cache
(``irt_embeddings``), the numpy tower and the probability (``irt_tower``), the torch
training of tower and profiles (``irt_training``), and the adapter that scores an exported
bundle like a router (``irt_bundle``). This module is the kind itself: the router, how it
is saved and loaded, and how ``edgeroute train --router irt`` trains it.

Folder: ``router.json`` (kind ``irt``; ``experts`` = the profiled experts),
``tower.npz`` (tower weights, numpy), ``profiles.json`` (``agent.profiles.ProfileSet``).
``score_batch`` returns P(correct) per expert: not a distribution, each in [0, 1].
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.profiles import Profile, ProfileSet
from export.errors import PipelineError
from export.routers.base import RouterMeta, TrainedRouter
from export.routers.irt_embeddings import embed
from export.routers.irt_tower import Tower, p_matrix
from export.routers.irt_training import IrtConfig, fit_tower

if TYPE_CHECKING:
    from export.routers.training import TrainingSet


LOCAL_MODELS = (  # profiles of models a device runs itself (priors for local experts)
    "qwen2.5-coder-0.5b", "smollm2-135m", "mistral-7b", "metamath", "zephyr", "dolphin",
    "llama-3-8b", "chinese-mistral", "meta-llama-3", "mistralai/mistral-7b-instruct",
)


def expert_kind(name: str) -> str:
    low = name.lower()
    return "local" if any(m in low for m in LOCAL_MODELS) else "cloud"


class IrtRouter(TrainedRouter):
    def __init__(self, meta: RouterMeta, tower: Tower, profiles: ProfileSet) -> None:
        super().__init__(meta)
        self.tower = tower
        self.profiles = profiles
        self.layers = int(meta.extra["layers"])

    @property
    def experts(self) -> tuple[str, ...]:
        return tuple(self.profiles.profiles)

    def features(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(u, d) of each text: what a profile fit needs."""
        return self.tower(embed(texts, self.layers, self.meta.max_length, progress=False))

    def score_batch(self, texts: list[str]) -> np.ndarray:
        u, d = self.features(texts)
        return p_matrix(u, d, list(self.profiles.profiles.values()))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.meta.experts = list(self.experts)
        self.meta.write(folder)
        np.savez(folder / "tower.npz", **self.tower.arrays())
        self.profiles.write(folder / "profiles.json")

    @classmethod
    def load(cls, folder: Path, meta: RouterMeta) -> IrtRouter:
        with np.load(Path(folder) / "tower.npz") as z:
            tower = Tower.from_arrays(z)
        return cls(meta, tower, ProfileSet.read(Path(folder) / "profiles.json"))


def train_irt(meta: RouterMeta, queries: list[str], y: np.ndarray, tr: np.ndarray,
              va: np.ndarray, cfg: IrtConfig, fitted_on: str,
              progress: bool = True) -> tuple[IrtRouter, dict[str, Any]]:
    """Embed (cached), fit the tower and profiles, and build the router."""
    x = embed(queries, cfg.layers, cfg.max_length, cfg.threads, progress=progress)
    t0 = time.monotonic()
    tower, theta, bias, log_ = fit_tower(x, y, tr, va, cfg)
    u, d = tower(x[tr])
    obs = (~np.isnan(y[tr])).sum(axis=0)
    profiles = []
    for j, name in enumerate(meta.experts):
        p = Profile(name, tuple(float(t) for t in theta[j]), float(bias[j]),
                    kind=expert_kind(name), fitted_on=fitted_on, observations=int(obs[j]))
        mean_p = float(p_matrix(u, d, [p]).mean()) if len(tr) else None
        profiles.append(Profile(**{**asdict(p), "mean_p": mean_p}))
    eid = tower.encoder_id(cfg.layers, cfg.max_length)
    pset = ProfileSet(eid, cfg.dim, {p.name: p for p in profiles})
    meta.extra = {**meta.extra, "layers": cfg.layers, "encoder_id": eid,
                  "irt": {k: v for k, v in asdict(cfg).items() if k != "threads"},
                  "head_fit_s": round(time.monotonic() - t0, 2)}
    return IrtRouter(meta, tower, pset), log_


def fit(data: TrainingSet) -> tuple[IrtRouter, dict[str, Any]]:
    """The kind registry's entry point (``edgeroute train --router irt --metric correct``)."""
    meta = data.meta
    if meta.metric != "correct":
        raise PipelineError(f"--router irt learns P(correct), not {meta.metric!r}: train it "
                            "with --metric correct")
    cfg = IrtConfig(layers=data.fit.layers or IrtConfig.layers, max_length=meta.max_length,
                    epochs=data.fit.epochs,
                    batch_size=data.fit.batch_size, lr=data.fit.lr,
                    patience=data.fit.patience, seed=data.fit.seed, threads=data.fit.threads)
    used = np.union1d(data.train_idx, data.val_idx)
    pos = {int(q): k for k, q in enumerate(used)}
    m = data.matrix
    split = "all rows" if data.all_rows else "train split"
    fitted_on = f"{data.table.name} {split} ({len(data.train_idx)} queries)"
    return train_irt(meta, [m.queries[i] for i in used], m.values["correct"][used],
                     np.array([pos[int(i)] for i in data.train_idx], dtype=int),
                     np.array([pos[int(i)] for i in data.val_idx], dtype=int), cfg,
                     fitted_on, data.fit.progress)


def train_on_matrix(m: Any, meta: RouterMeta, cfg: IrtConfig, train_idx: np.ndarray,
                    val_fraction: float, fitted_on: str,
                    progress: bool = True) -> tuple[IrtRouter, dict[str, Any]]:
    """Fit on ``train_idx`` of an OutcomeMatrix (metric ``correct``), validation carved out
    of it as ``edgeroute train`` carves it. Only these queries are embedded."""
    from export.routers.training import validation_split

    inner, val = validation_split(len(train_idx), val_fraction, cfg.seed)
    used = np.sort(train_idx)
    pos = {int(q): k for k, q in enumerate(used)}
    tr = np.array([pos[int(train_idx[i])] for i in inner], dtype=int)
    va = np.array([pos[int(train_idx[i])] for i in val], dtype=int)
    return train_irt(meta, [m.queries[i] for i in used], m.values["correct"][used], tr, va,
                     cfg, fitted_on, progress)
