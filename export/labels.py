"""From the expert table to training targets: a per-query matrix of outcomes, the chosen
metric oriented so that higher is better, soft labels, and the train/test split.

Why soft labels: the paper (Stripelis et al., 2024) scales a metric per query across
experts with a softmax, so that the router learns "how much better" an expert is, not just
which one won. Why masks: an expert without a recorded outcome for a query (a public table
that covers only some experts, a failed call) must not look like a zero-quality expert;
its label is 0 *and* it is excluded from the softmax and from the loss.

Metrics (``--metric``): ``bertsim`` (higher is better), ``correct`` (higher), ``nll``
(lower is better, so negated), ``trilemma`` (a weighted score of a quality metric, cost
and throughput, each normalised per query; see :func:`metric_values`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import TableError

METRICS: tuple[str, ...] = ("bertsim", "correct", "nll", "trilemma")
OUTCOME_COLUMNS: tuple[str, ...] = (
    "bertsim",
    "nll",
    "correct",
    "latency_s",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "mean_logprob",
    "min_logprob",
    "check",
)


@dataclass(frozen=True)
class LabelSpec:
    """How outcomes become soft labels. Stored in router.json so evaluation agrees."""

    metric: str = "bertsim"
    temperature: float = 0.1
    quality: str = "bertsim"  # the quality part of ``trilemma``
    cost_weight: float = 0.5  # trilemma only
    throughput_weight: float = 0.0  # trilemma only

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise TableError(f"unknown metric {self.metric!r}; choose one of {list(METRICS)}")
        if self.quality not in ("bertsim", "correct", "nll"):
            raise TableError(
                f"trilemma quality must be bertsim, correct or nll, not {self.quality!r}"
            )
        if not self.temperature > 0:
            raise TableError(f"temperature must be > 0, got {self.temperature}")


@dataclass
class OutcomeMatrix:
    """The table pivoted to queries x experts; NaN where an outcome is missing."""

    query_ids: list[str]
    datasets: list[str]
    queries: list[str]
    splits: list[str | None]
    experts: list[str]
    values: dict[str, np.ndarray] = field(default_factory=dict)  # column -> (n_q, n_e)

    def __len__(self) -> int:
        return len(self.query_ids)

    def subset(self, idx: np.ndarray) -> OutcomeMatrix:
        """The rows ``idx`` (an int index array), same experts."""
        pick = [int(i) for i in idx]
        return OutcomeMatrix(
            query_ids=[self.query_ids[i] for i in pick],
            datasets=[self.datasets[i] for i in pick],
            queries=[self.queries[i] for i in pick],
            splits=[self.splits[i] for i in pick],
            experts=list(self.experts),
            values={c: v[idx] for c, v in self.values.items()},
        )

    def throughput(self) -> np.ndarray:
        """Tokens per second (output_tokens / latency_s); NaN where unknown."""
        lat = self.values["latency_s"]
        out = self.values["output_tokens"]
        with np.errstate(divide="ignore", invalid="ignore"):
            tp = np.where(lat > 0, out / lat, np.nan)
        return tp


def build_matrix(
    rows: Sequence[dict[str, Any]], experts: Sequence[str] | None = None
) -> OutcomeMatrix:
    """Pivot table rows. ``experts`` fixes the column order (a trained router's label order);
    otherwise experts are sorted by name. Raises TableError for fewer than two experts."""
    if not rows:
        raise TableError("the expert table has no rows")
    names = list(experts) if experts is not None else sorted({r["expert"] for r in rows})
    if len(names) < 2:
        raise TableError(
            f"the expert table has {len(names)} expert(s) {names}; routing needs at least two"
        )
    col = {e: j for j, e in enumerate(names)}
    qindex: dict[str, int] = {}
    meta: list[tuple[str, str, str | None]] = []
    for r in rows:
        if r["query_id"] not in qindex:
            qindex[r["query_id"]] = len(meta)
            meta.append((r["dataset"], r["query"], r.get("split")))
    values = {c: np.full((len(meta), len(names)), np.nan) for c in OUTCOME_COLUMNS}
    for r in rows:
        j = col.get(r["expert"])
        if j is None:
            continue  # an expert the router does not know: ignored
        i = qindex[r["query_id"]]
        for c in OUTCOME_COLUMNS:
            v = r.get(c)
            if v is not None:
                values[c][i, j] = float(v)
    return OutcomeMatrix(
        query_ids=list(qindex),
        datasets=[m[0] for m in meta],
        queries=[m[1] for m in meta],
        splits=[m[2] for m in meta],
        experts=names,
        values=values,
    )


def _per_query_scale(x: np.ndarray) -> np.ndarray:
    """Divide each row by its largest finite absolute value (0 stays 0, NaN stays NaN)."""
    with np.errstate(invalid="ignore"):
        top = np.nanmax(np.where(np.isnan(x), np.nan, np.abs(x)), axis=1, keepdims=True)
    top = np.where(np.isfinite(top) & (top > 0), top, 1.0)
    return x / top


def _oriented(m: OutcomeMatrix, column: str) -> np.ndarray:
    if column not in m.values:
        raise TableError(f"unknown outcome column {column!r}")
    v = m.values[column]
    if np.isnan(v).all():
        raise TableError(
            f"the table has no values in column {column!r}; pick another --metric "
            f"(columns with values: {[c for c in METRICS[:3] if not np.isnan(m.values[c]).all()]})"
        )
    return -v if column == "nll" else v.copy()


def metric_values(m: OutcomeMatrix, spec: LabelSpec) -> np.ndarray:
    """The chosen metric per (query, expert), higher is better, NaN where missing.

    ``trilemma`` = quality - cost_weight * cost/max_cost + throughput_weight * tp/max_tp,
    with cost and throughput scaled per query across experts. A query whose cost is missing
    for an expert masks that expert (the score cannot be formed)."""
    if spec.metric != "trilemma":
        return _oriented(m, spec.metric)
    quality = _oriented(m, spec.quality)
    if spec.quality == "nll":
        quality = _per_query_scale(quality)
    score = quality.copy()
    if spec.cost_weight:
        cost = m.values["cost_usd"]
        if np.isnan(cost).all():
            raise TableError("metric 'trilemma' with a cost weight needs column 'cost_usd'")
        score = score - spec.cost_weight * _per_query_scale(cost)
    if spec.throughput_weight:
        tp = m.throughput()
        if np.isnan(tp).all():
            raise TableError(
                "metric 'trilemma' with a throughput weight needs 'latency_s' and 'output_tokens'"
            )
        score = score + spec.throughput_weight * _per_query_scale(tp)
    return score


def soft_labels(values: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Masked per-row softmax of ``values / temperature``.

    Returns ``(labels, mask)``: mask is True where a value exists; masked entries get label
    0 and take no part in the normalisation. Rows with no value at all get all-zero labels
    (callers drop them: see :func:`labelled_rows`)."""
    if not temperature > 0:
        raise TableError(f"temperature must be > 0, got {temperature}")
    mask = ~np.isnan(values)
    z = np.where(mask, values / temperature, -np.inf)
    top = np.max(z, axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.where(mask, np.exp(z - top), 0.0)
    total = e.sum(axis=1, keepdims=True)
    labels = np.divide(e, total, out=np.zeros_like(e), where=total > 0)
    return labels, mask


def labelled_rows(values: np.ndarray) -> np.ndarray:
    """Indices of queries where at least one expert has a value (the others teach nothing)."""
    return np.flatnonzero((~np.isnan(values)).any(axis=1))


def split_indices(
    m: OutcomeMatrix, seed: int, test_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices.

    A query's ``split`` ("train"/"test") is honoured where given. Queries without one are
    split per dataset: a seeded random ``test_fraction`` share (the paper's 20%) of each
    dataset's unsplit queries goes to test, so small datasets are represented there too.
    Raises TableError for a bad split value or an empty side."""
    bad = sorted({str(s) for s in m.splits if s not in (None, "train", "test")})
    if bad:
        raise TableError(f"column 'split' must be 'train', 'test' or null, found {bad}")
    if not 0 < test_fraction < 1:
        raise TableError(f"test fraction must be in (0, 1), got {test_fraction}")
    train_l = [i for i, s in enumerate(m.splits) if s == "train"]
    test_l = [i for i, s in enumerate(m.splits) if s == "test"]
    rng = np.random.default_rng(seed)
    for ds in sorted(set(m.datasets)):
        idx = np.array(
            [
                i
                for i, (d, s) in enumerate(zip(m.datasets, m.splits, strict=True))
                if d == ds and s is None
            ],
            dtype=int,
        )
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(len(idx) * test_fraction))
        test_l.extend(idx[:n_test].tolist())
        train_l.extend(idx[n_test:].tolist())
    train, test = np.array(sorted(train_l), dtype=int), np.array(sorted(test_l), dtype=int)
    if len(train) == 0:
        raise TableError("the train split is empty: add 'train' rows or leave 'split' null")
    if len(test) == 0:
        raise TableError(
            "the test split is empty: the table needs more queries per dataset, "
            "or 'test' rows in column 'split'"
        )
    return train, test


def subsample_per_dataset(
    idx: np.ndarray, datasets: list[str], limit: int | None, seed: int
) -> np.ndarray:
    """At most ``limit`` indices of ``idx``, drawn evenly over datasets (seeded).

    Why: fine-tuning BERT on tens of thousands of queries is unaffordable on a few CPU
    cores; a capped, balanced sample keeps every dataset in the training set."""
    if limit is None or len(idx) <= limit:
        return idx
    rng = np.random.default_rng(seed + 2)
    by_ds: dict[str, list[int]] = {}
    for i in idx:
        by_ds.setdefault(datasets[int(i)], []).append(int(i))
    groups = [rng.permutation(np.array(v)).tolist() for _, v in sorted(by_ds.items())]
    out: list[int] = []
    while len(out) < limit:
        for g in groups:
            if g and len(out) < limit:
                out.append(g.pop())
    return np.array(sorted(out), dtype=int)


def table_sha256(path: Path) -> str:
    """Hash of the table file, stored in router.json to tie a router to its data."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def finite_mean(x: np.ndarray) -> float | None:
    """Mean over finite entries, or None when there are none (JSON-friendly)."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None


def is_finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)
