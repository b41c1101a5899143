"""One interface for every router: queries in, a score per expert out (label order).

A trained router lives in a folder with ``router.json`` (the contract with the ONNX
exporter and the daemon)::

    {"format": 1, "kind": "bert"|"mlp"|"knn", "experts": [...label order...],
     "metric": str, "temperature": float, "max_length": int, "seed": int,
     "table_sha256": str, "train_queries": int, "datasets": [...], ...}

plus kind-specific files (``hf/`` for BERT, ``mlp.npz`` + ``vocab.json`` for MLP,
``knn.npz`` for 1NN). :meth:`RouterMeta.read` is the one reader of router.json (train,
evaluate, calibrate and export all use it); the kind registry (``export.routers.kinds``)
checks its kind (``read_meta``) and loads a folder (``load_router``). This module imports
neither the registry nor any kind: they import it.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import PipelineError
from export.labels import LabelSpec

FORMAT = 1


@dataclass
class RouterMeta:
    """The contents of router.json."""

    kind: str
    experts: list[str]
    metric: str
    temperature: float
    seed: int
    table_sha256: str
    train_queries: int
    datasets: list[str]
    max_length: int = 256
    format: int = FORMAT
    label_spec: dict[str, Any] = field(default_factory=dict)
    test_fraction: float = 0.2
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(asdict(self), indent=2, sort_keys=True)
        (folder / "router.json").write_text(text + "\n", encoding="utf-8")

    @classmethod
    def read(cls, folder: Path) -> RouterMeta:
        """router.json of ``folder``, its format checked against this version (its kind is
        the registry's to check: ``export.routers.kinds.read_meta``)."""
        path = Path(folder) / "router.json"
        if not path.is_file():
            raise PipelineError(f"{folder} is not a trained router: {path} is missing; "
                                "run `edgeroute train` first")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            meta = cls(**data)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
            raise PipelineError(f"{path} is not a valid router.json ({exc})") from exc
        if meta.format != FORMAT:
            raise PipelineError(
                f"{path}: unsupported format {meta.format} (this version reads format {FORMAT})"
            )
        return meta

    def labels(self) -> LabelSpec:
        """How the router's labels were made (a router.json without ``label_spec``: its
        metric and temperature), so every stage scores the router on the same values."""
        spec = self.label_spec or {"metric": self.metric, "temperature": self.temperature}
        return LabelSpec(**spec)


class TrainedRouter(ABC):
    """A router that scores experts for queries. Higher is better; rows sum to 1."""

    def __init__(self, meta: RouterMeta) -> None:
        self.meta = meta

    @property
    def kind(self) -> str:
        return self.meta.kind

    @property
    def experts(self) -> tuple[str, ...]:
        return tuple(self.meta.experts)

    @abstractmethod
    def score_batch(self, texts: list[str]) -> np.ndarray:
        """Scores, shape (len(texts), len(experts)), in label order."""

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write router.json and the kind's files into ``folder``."""

    def scores(self, text: str) -> dict[str, float]:
        """The daemon-facing form of :meth:`score_batch` for one query."""
        row = self.score_batch([text])[0]
        return {e: float(s) for e, s in zip(self.experts, row, strict=True)}


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
