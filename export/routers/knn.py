"""1NN baseline router: the training query closest in MiniLM embedding space lends its
label vector (so its best expert wins). The paper's non-parametric reference point."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.routers.base import RouterMeta, TrainedRouter
from export.routers.encoder import embed

if TYPE_CHECKING:
    from export.routers.kinds import TrainingSet


class KnnRouter(TrainedRouter):
    def __init__(self, meta: RouterMeta, embeddings: np.ndarray, labels: np.ndarray) -> None:
        super().__init__(meta)
        self.embeddings = embeddings.astype(np.float32)
        self.labels = labels.astype(np.float32)

    def score_batch(self, texts: list[str]) -> np.ndarray:
        return self.score_embeddings(embed(texts, max_length=self.meta.max_length))

    def score_embeddings(self, q: np.ndarray) -> np.ndarray:
        nearest = np.argmax(q @ self.embeddings.T, axis=1)
        return self.labels[nearest]

    def save(self, folder: Path) -> None:
        self.meta.write(folder)
        np.savez_compressed(
            folder / "knn.npz", embeddings=self.embeddings.astype(np.float16), labels=self.labels
        )

    @classmethod
    def load(cls, folder: Path, meta: RouterMeta) -> KnnRouter:
        with np.load(folder / "knn.npz") as z:
            return cls(meta, z["embeddings"], z["labels"])


def train_knn(
    meta: RouterMeta,
    queries: list[str],
    labels: np.ndarray,
    train_idx: np.ndarray,
) -> KnnRouter:
    """'Training' is embedding the training queries and keeping their soft labels."""
    emb = embed([queries[i] for i in train_idx], max_length=meta.max_length)
    return KnnRouter(meta, emb, labels[train_idx])


def fit(data: TrainingSet) -> tuple[KnnRouter, dict[str, Any]]:
    """The registry's entry point (``export.routers.kinds``): no training loop, no log."""
    return train_knn(data.meta, data.queries, data.labels, data.train_idx), {}
