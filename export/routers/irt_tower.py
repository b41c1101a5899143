"""The query tower of the ``irt`` router in numpy: u(x), d(x) of a pooled embedding x, and
P(e correct | q) = sigmoid(u . theta_e + b_e - d) for a set of profiles.

numpy only, so scoring and profile fits need no torch; the tower is trained by
``export.routers.irt_training`` and traced to ONNX by ``export.irt_export``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.profiles import Profile, sigmoid


@dataclass(frozen=True)
class Tower:
    """u(x) and d(x) of pooled embeddings x; ``w1`` is None for a linear tower."""

    wu: np.ndarray
    bu: np.ndarray
    wd: np.ndarray
    bd: float
    w1: np.ndarray | None = None
    b1: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = x if self.w1 is None else np.maximum(x @ self.w1.T + self.b1, 0.0)
        return h @ self.wu.T + self.bu, h @ self.wd + self.bd

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"wu": self.wu, "bu": self.bu, "wd": self.wd, "bd": np.array(self.bd)}
        if self.w1 is not None and self.b1 is not None:
            out |= {"w1": self.w1, "b1": self.b1}
        return out

    @classmethod
    def from_arrays(cls, z: Any) -> Tower:
        return cls(z["wu"], z["bu"], z["wd"], float(z["bd"]),
                   z.get("w1"), z.get("b1"))

    def encoder_id(self, layers: int, max_length: int) -> str:
        h = hashlib.sha256(f"minilm-L{layers}-len{max_length}".encode())
        for k, v in sorted(self.arrays().items()):
            h.update(k.encode())
            h.update(np.ascontiguousarray(v, dtype=np.float32).tobytes())
        return h.hexdigest()


def p_matrix(u: np.ndarray, d: np.ndarray, profiles: Sequence[Profile]) -> np.ndarray:
    theta = np.array([p.theta for p in profiles], dtype=np.float64)
    bias = np.array([p.bias for p in profiles], dtype=np.float64)
    z = u @ theta.T + bias[None, :] - d[:, None]
    return sigmoid(z)
