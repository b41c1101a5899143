"""The paper's reference points, as routing policies over the test split.

A policy is a (queries x experts) weight matrix, each row a distribution over the experts
that have an outcome: a router's choice is one-hot, Zero spreads evenly (the expected
outcome of picking blindly, i.e. the mean of all experts), Random is a seeded one-hot pick.
Optimal is not a policy: per query it takes the best value any expert recorded, metric by
metric (max quality/BERTSim/accuracy/throughput, min cost, min NLL), an upper bound that
no single routing decision can beat.
"""

from __future__ import annotations

import numpy as np

from export.labels import OutcomeMatrix


def choose(scores: np.ndarray, available: np.ndarray) -> np.ndarray:
    """One-hot weights of the best-scored expert among those with an outcome.

    Why restrict to available experts: a public table may lack an expert's outcome for a
    query, and an evaluation cannot score a choice whose result was never recorded."""
    s = np.where(available, scores, -np.inf)
    pick = np.argmax(s, axis=1)
    w = np.zeros_like(scores, dtype=float)
    rows = np.flatnonzero(available.any(axis=1))
    w[rows, pick[rows]] = 1.0
    return w


def zero_weights(available: np.ndarray) -> np.ndarray:
    """Zero router: uniform over the available experts of each query."""
    a = available.astype(float)
    n = a.sum(axis=1, keepdims=True)
    return np.divide(a, n, out=np.zeros_like(a), where=n > 0)


def random_weights(available: np.ndarray, seed: int) -> np.ndarray:
    """Random router: a seeded uniform pick among the available experts."""
    rng = np.random.default_rng(seed)
    return choose(rng.random(available.shape), available)


def expert_weights(available: np.ndarray, j: int) -> np.ndarray:
    """Always expert ``j`` (rows where it has no outcome stay empty: no value there)."""
    w = np.zeros(available.shape, dtype=float)
    w[available[:, j], j] = 1.0
    return w


def optimal_weights(quality: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """The oracle's choice for queries-per-expert: best quality, ties to the cheapest."""
    available = ~np.isnan(quality)
    c = np.where(np.isnan(cost), 1e30, cost)  # unknown cost: last among equals
    top = np.nanmax(np.where(available, quality, -np.inf), axis=1, keepdims=True)
    best = available & (quality >= top - 1e-12)
    # among the best, prefer lower cost; then the lower index
    return choose(-c, best)


def optimal_bounds(m: OutcomeMatrix, quality: np.ndarray) -> dict[str, np.ndarray]:
    """Per-query best recorded value of every metric (NaN where no expert has one)."""
    v = m.values
    return {
        "quality": _nan_reduce(quality, np.nanmax),
        "cost_usd": _nan_reduce(v["cost_usd"], np.nanmin),
        "throughput_tps": _nan_reduce(m.throughput(), np.nanmax),
        "bertsim": _nan_reduce(v["bertsim"], np.nanmax),
        "nll": _nan_reduce(v["nll"], np.nanmin),
        "accuracy": _nan_reduce(v["correct"], np.nanmax),
    }


def _nan_reduce(x: np.ndarray, fn: object) -> np.ndarray:
    out = np.full(x.shape[0], np.nan)
    rows = ~np.isnan(x).all(axis=1)
    if rows.any():
        out[rows] = fn(x[rows], axis=1)  # type: ignore[operator]
    return out
