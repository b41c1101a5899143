"""Training of the ``irt`` router's query tower and profiles: binary cross-entropy (soft
targets where a table gives a soft score) on every observed (query, expert) cell, so tables
with different expert sets pool into one model; early stopping on a validation split. The
tower is linear (``hidden=0``) or one ReLU layer.

Its own module beside the numpy tower (``irt_tower``) and the router (``irt``): the one
part that needs torch (imported inside :func:`fit_tower`), and the shape and training
settings (:class:`IrtConfig`) the study scripts sweep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from export.routers.irt_tower import Tower


@dataclass(frozen=True)
class IrtConfig:
    """Shape and training of the query tower. Chosen on validation (README)."""

    layers: int = 1
    dim: int = 32
    hidden: int = 256  # 0: linear tower
    max_length: int = 128
    epochs: int = 300
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    dropout: float = 0.1
    patience: int = 15
    seed: int = 0
    threads: int = 2


def fit_tower(x: np.ndarray, y: np.ndarray, tr: np.ndarray, va: np.ndarray,
              cfg: IrtConfig) -> tuple[Tower, np.ndarray, np.ndarray, dict[str, Any]]:
    """Train tower + profiles by masked BCE on ``y`` (queries x experts, NaN = unobserved).
    Returns the tower, theta (E, K), bias (E,) and the training log."""
    import torch

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, cfg.threads))
    n_exp = y.shape[1]
    width = cfg.hidden or x.shape[1]
    hidden = torch.nn.Linear(x.shape[1], cfg.hidden) if cfg.hidden else None
    lin_u, lin_d = torch.nn.Linear(width, cfg.dim), torch.nn.Linear(width, 1)
    theta = torch.nn.Parameter(0.1 * torch.randn(n_exp, cfg.dim))
    bias = torch.nn.Parameter(torch.zeros(n_exp))
    drop = torch.nn.Dropout(cfg.dropout)
    modules = [m for m in (hidden, lin_u, lin_d) if m is not None]
    params = [p for m in modules for p in m.parameters()] + [theta, bias]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    X = torch.tensor(x, dtype=torch.float32)
    Y = torch.tensor(np.nan_to_num(y, nan=0.0), dtype=torch.float32)
    M = torch.tensor(~np.isnan(y), dtype=torch.float32)

    def logits(idx: Any, train: bool) -> Any:
        h = X[idx]
        if hidden is not None:
            h = torch.relu(hidden(drop(h) if train else h))
        h = drop(h) if train else h
        return lin_u(h) @ theta.T + bias - lin_d(h)

    def loss_of(idx: Any, train: bool) -> Any:
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            logits(idx, train), Y[idx], reduction="none")
        return (bce * M[idx]).sum() / M[idx].sum().clamp(min=1)

    rng = np.random.default_rng(cfg.seed)
    best, best_state, stale, history = float("inf"), None, 0, []
    va_t = torch.tensor(va)
    for _epoch in range(cfg.epochs):
        for m in modules:
            m.train()
        order = rng.permutation(tr)
        for i in range(0, len(order), cfg.batch_size):
            opt.zero_grad()
            loss_of(torch.tensor(order[i:i + cfg.batch_size]), True).backward()
            opt.step()
        with torch.no_grad():
            val = float(loss_of(va_t, False)) if len(va) else 0.0
        history.append(round(val, 5))
        if val < best - 1e-5:
            best, stale = val, 0
            best_state = [p.detach().clone() for p in params]
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        with torch.no_grad():
            for p, s in zip(params, best_state, strict=True):
                p.copy_(s)
    det = lambda t: t.detach().numpy().astype(np.float64)  # noqa: E731
    tower = Tower(det(lin_u.weight), det(lin_u.bias), det(lin_d.weight)[0],
                  float(lin_d.bias.item()),
                  det(hidden.weight) if hidden is not None else None,
                  det(hidden.bias) if hidden is not None else None)
    return tower, det(theta), det(bias), {"val_bce": history, "best_val_bce": best,
                                          "epochs": len(history)}
