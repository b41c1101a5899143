"""The training loop shared by the MLP and BERT routers: cross-entropy on soft labels with
masks, seeded shuffling, tqdm progress, early stopping on a validation split.

Why one loop: both routers learn the same target (the masked soft labels from
``export.labels``); only how a batch of queries becomes logits differs, so the caller
passes ``make_batch`` (indices -> model inputs) and ``forward`` (inputs -> logits).
torch is imported inside the functions, never at import time.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from export.labels import OutcomeMatrix
    from export.routers.base import RouterMeta


@dataclass(frozen=True)
class FitConfig:
    epochs: int = 4
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    patience: int = 1
    seed: int = 0
    threads: int = 2
    progress: bool = True
    layers: int | None = None  # bert: encoder layers kept (None: all)


@dataclass(frozen=True)
class TrainingSet:
    """Everything a kind's ``fit`` may use; rows of every array are the table's queries.

    Built by ``edgeroute train`` (``export.train``); it names the table and the rows it
    trains on rather than carrying the stage's config, so the kinds need not import it."""

    meta: RouterMeta
    matrix: OutcomeMatrix  # the whole table, queries x experts, raw outcomes
    values: np.ndarray  # the label metric (higher is better), NaN where unknown
    labels: np.ndarray  # soft labels
    mask: np.ndarray  # experts with a value per query
    train_idx: np.ndarray
    val_idx: np.ndarray  # empty for kinds without a validation split
    fit: FitConfig
    table: Path  # the expert table the rows come from
    all_rows: bool = False  # train_idx holds the test split too (``train --all-rows``)

    @property
    def queries(self) -> list[str]:
        return self.matrix.queries


def seed_everything(seed: int, threads: int) -> None:
    """Deterministic torch on CPU for a given seed."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, threads))
    torch.use_deterministic_algorithms(True, warn_only=True)


def soft_cross_entropy(logits: Any, labels: Any, mask: Any) -> Any:
    """Mean over queries of -sum_e label_e * log softmax_e, over unmasked experts only.

    Masked experts are pushed to -1e9 before the softmax, so they take no probability mass
    and, having label 0, contribute nothing to the loss."""
    import torch

    z = logits.masked_fill(~mask, -1e9)
    logp = torch.log_softmax(z, dim=1)
    return -(labels * logp.masked_fill(~mask, 0.0)).sum(dim=1).mean()


def validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, val) indices over range(n); val is empty when n is tiny."""
    perm = np.random.default_rng(seed + 1).permutation(n)
    n_val = int(round(n * fraction)) if n >= 20 else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def fit(
    model: Any,
    make_batch: Callable[[np.ndarray], Any],
    forward: Callable[[Any], Any],
    labels: np.ndarray,
    mask: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: FitConfig,
    desc: str,
) -> dict[str, Any]:
    """Train ``model`` in place; keep the weights of the best validation epoch."""
    import torch
    from tqdm.auto import tqdm

    y = torch.tensor(labels, dtype=torch.float32)
    m = torch.tensor(mask, dtype=torch.bool)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    best = (float("inf"), copy.deepcopy(model.state_dict()), 0)
    history: list[dict[str, float]] = []
    bad_epochs = 0
    t0 = time.monotonic()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = train_idx[rng.permutation(len(train_idx))]
        batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        total = 0.0
        bar = tqdm(batches, desc=f"{desc} epoch {epoch}/{cfg.epochs}", disable=not cfg.progress)
        for b in bar:
            opt.zero_grad()
            loss = soft_cross_entropy(forward(make_batch(b)), y[b], m[b])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += float(loss.detach()) * len(b)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        train_loss = total / max(1, len(train_idx))
        val_loss = evaluate_loss(model, make_batch, forward, y, m, val_idx, cfg.batch_size)
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        score = val_loss if len(val_idx) else train_loss
        if score < best[0] - 1e-6:
            best, bad_epochs = (score, copy.deepcopy(model.state_dict()), epoch), 0
        else:
            bad_epochs += 1
            if bad_epochs > cfg.patience:
                break
    model.load_state_dict(best[1])
    model.eval()
    return {"history": history, "best_epoch": best[2], "wall_s": round(time.monotonic() - t0, 2)}


def evaluate_loss(
    model: Any,
    make_batch: Callable[[np.ndarray], Any],
    forward: Callable[[Any], Any],
    y: Any,
    m: Any,
    idx: np.ndarray,
    batch_size: int,
) -> float:
    import torch

    if len(idx) == 0:
        return float("nan")
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(idx), batch_size):
            b = idx[i : i + batch_size]
            total += float(soft_cross_entropy(forward(make_batch(b)), y[b], m[b])) * len(b)
    return total / len(idx)
