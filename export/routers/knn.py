"""1NN baseline router: the training query closest in MiniLM embedding space lends its
label vector (so its best expert wins). The paper's non-parametric reference point.

Ties: with binary correctness most neighbours' labels are uniform over the experts that
were right, and a bare argmax then picks whichever of them comes first by name (on the
RouterBench slice the weakest model, WizardLM-13B: 1NN fell below Random). Ties are broken
by each expert's mean soft label over the training queries (how often it is among the
best), added at a weight far below any real label difference."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.routers.base import RouterMeta, TrainedRouter
from export.routers.encoder import embed

if TYPE_CHECKING:
    from export.routers.training import TrainingSet


TIE_WEIGHT = 1e-6  # far below any two distinct labels' difference


class KnnRouter(TrainedRouter):
    def __init__(self, meta: RouterMeta, embeddings: np.ndarray, labels: np.ndarray,
                 prior: np.ndarray | None = None) -> None:
        super().__init__(meta)
        self.embeddings = embeddings.astype(np.float32)
        self.labels = labels.astype(np.float32)
        # each expert's mean training label: breaks a neighbour's ties (module docstring)
        self.prior = (np.zeros(labels.shape[1]) if prior is None
                      else np.asarray(prior, dtype=np.float64))

    def score_batch(self, texts: list[str]) -> np.ndarray:
        return self.score_embeddings(embed(texts, max_length=self.meta.max_length))

    def score_embeddings(self, q: np.ndarray) -> np.ndarray:
        nearest = np.argmax(q @ self.embeddings.T, axis=1)
        return self.labels[nearest] + TIE_WEIGHT * self.prior[None, :]

    def save(self, folder: Path) -> None:
        self.meta.write(folder)
        np.savez_compressed(
            folder / "knn.npz", embeddings=self.embeddings.astype(np.float16), labels=self.labels,
            prior=self.prior)

    @classmethod
    def load(cls, folder: Path, meta: RouterMeta) -> KnnRouter:
        with np.load(folder / "knn.npz") as z:
            return cls(meta, z["embeddings"], z["labels"],
                       z["prior"] if "prior" in z.files else None)


def train_knn(
    meta: RouterMeta,
    queries: list[str],
    labels: np.ndarray,
    train_idx: np.ndarray,
) -> KnnRouter:
    """'Training' is embedding the training queries and keeping their soft labels."""
    emb = embed([queries[i] for i in train_idx], max_length=meta.max_length)
    kept = labels[train_idx]
    return KnnRouter(meta, emb, kept, np.nan_to_num(kept, nan=0.0).mean(axis=0))


def fit(data: TrainingSet) -> tuple[KnnRouter, dict[str, Any]]:
    """The registry's entry point (``export.routers.kinds``): no training loop, no log."""
    return train_knn(data.meta, data.queries, data.labels, data.train_idx), {}
