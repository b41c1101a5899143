"""MLP-Router: a bag-of-words vectorizer fitted on the training queries, then a one-hidden-
layer MLP trained with cross-entropy on the soft labels (torch on CPU).

Why numpy at inference: the trained weights are saved as plain arrays (``mlp.npz``) and
``score_batch`` is a few matrix products, so scoring needs no torch.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.routers.base import RouterMeta, TrainedRouter, softmax_rows
from export.routers.training import FitConfig

if TYPE_CHECKING:
    from export.routers.training import TrainingSet

_TOKEN = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")


def tokens(text: str) -> list[str]:
    """Lower-cased words, numbers and single symbols, plus word bigrams."""
    words = _TOKEN.findall(text.lower())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]


@dataclass
class Vectorizer:
    """TF-IDF bag of words over a vocabulary chosen by document frequency."""

    vocab: dict[str, int]
    idf: np.ndarray

    @classmethod
    def fit(cls, texts: list[str], max_features: int = 4000, min_df: int = 2) -> Vectorizer:
        df: Counter[str] = Counter()
        for t in texts:
            df.update(set(tokens(t)))
        keep = [w for w, c in df.items() if c >= min_df] or list(df)
        keep.sort(key=lambda w: (-df[w], w))  # deterministic order
        keep = keep[:max_features]
        n = len(texts)
        idf = np.array([math.log((1 + n) / (1 + df[w])) + 1.0 for w in keep], dtype=np.float32)
        return cls(vocab={w: i for i, w in enumerate(keep)}, idf=idf)

    def transform(self, texts: list[str]) -> np.ndarray:
        x = np.zeros((len(texts), len(self.vocab)), dtype=np.float32)
        for r, t in enumerate(texts):
            for w, c in Counter(tokens(t)).items():
                j = self.vocab.get(w)
                if j is not None:
                    x[r, j] = 1.0 + math.log(c)
        x *= self.idf
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(norm > 0, norm, 1.0)


class MlpRouter(TrainedRouter):
    def __init__(self, meta: RouterMeta, vectorizer: Vectorizer, weights: dict[str, np.ndarray]):
        super().__init__(meta)
        self.vectorizer = vectorizer
        self.weights = weights

    def score_batch(self, texts: list[str]) -> np.ndarray:
        w = self.weights
        h = np.maximum(self.vectorizer.transform(texts) @ w["w1"].T + w["b1"], 0.0)
        return softmax_rows(h @ w["w2"].T + w["b2"])

    def save(self, folder: Path) -> None:
        self.meta.write(folder)
        (folder / "vocab.json").write_text(
            json.dumps(list(self.vectorizer.vocab), ensure_ascii=False), encoding="utf-8"
        )
        np.savez_compressed(folder / "mlp.npz", idf=self.vectorizer.idf, **self.weights)

    @classmethod
    def load(cls, folder: Path, meta: RouterMeta) -> MlpRouter:
        words = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        with np.load(folder / "mlp.npz") as z:
            arrays = {k: z[k].astype(np.float32) for k in z.files}
        vec = Vectorizer(vocab={w: i for i, w in enumerate(words)}, idf=arrays.pop("idf"))
        return cls(meta, vec, arrays)


def train_mlp(
    meta: RouterMeta,
    queries: list[str],
    labels: np.ndarray,
    mask: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: FitConfig,
    hidden: int = 128,
) -> tuple[MlpRouter, dict[str, Any]]:
    """Fit the vectorizer on the training queries only, then the MLP."""
    import torch

    from export.routers.training import fit, seed_everything

    seed_everything(cfg.seed, cfg.threads)
    vec = Vectorizer.fit([queries[i] for i in train_idx])
    x = torch.tensor(vec.transform(queries))
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(hidden, labels.shape[1]),
    )
    log = fit(net, lambda b: x[b], net, labels, mask, train_idx, val_idx, cfg, "mlp")
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items()}
    weights = {"w1": sd["0.weight"], "b1": sd["0.bias"], "w2": sd["3.weight"], "b2": sd["3.bias"]}
    return MlpRouter(meta, vec, weights), log


def fit(data: TrainingSet) -> tuple[MlpRouter, dict[str, Any]]:
    """The registry's entry point (``export.routers.kinds``)."""
    return train_mlp(data.meta, data.queries, data.labels, data.mask, data.train_idx,
                     data.val_idx, data.fit)
