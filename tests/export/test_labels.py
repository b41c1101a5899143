"""Soft labels, masks, metric orientation and the train/test split (export/labels.py)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from export.errors import TableError
from export.labels import (
    LabelSpec,
    build_matrix,
    metric_values,
    soft_labels,
    split_indices,
)

WORDS = {
    "math": [
        "add",
        "sum",
        "integer",
        "divide",
        "multiply",
        "fraction",
        "number",
        "total",
        "equation",
    ],
    "code": ["python", "function", "list", "string", "return", "loop", "write", "program", "sort"],
}


def synthetic_rows(
    n_per_dataset: int = 20,
    experts: tuple[str, ...] = ("big", "small", "mid"),
    best: dict[str, str] | None = None,
    seed: int = 0,
    split: bool = False,
) -> list[dict[str, Any]]:
    """A table where ``best[dataset]`` is the best expert on that dataset, the others worse.

    Costs: big 10x small, mid in between; tokens and latency make throughput finite."""
    best = best or {"math": "big", "code": "small"}
    rng = random.Random(seed)
    cost = {e: 1e-4 * (10 if e == "big" else 3 if e == "mid" else 1) for e in experts}
    rows: list[dict[str, Any]] = []
    for ds, words in WORDS.items():
        for i in range(n_per_dataset):
            q = f"{ds} task: " + " ".join(rng.choice(words) for _ in range(8))
            for e in experts:
                good = e == best[ds]
                rows.append(
                    {
                        "query_id": f"{ds}-{i}",
                        "dataset": ds,
                        "query": q,
                        "expert": e,
                        "split": ("test" if i % 5 == 0 else "train") if split else None,
                        "bertsim": (0.9 if good else 0.4) + rng.uniform(-0.05, 0.05),
                        "nll": (5.0 if good else 20.0) + rng.uniform(-1, 1),
                        "correct": 1.0 if good else float(rng.random() < 0.2),
                        "latency_s": 1.0 + rng.random(),
                        "input_tokens": 20,
                        "output_tokens": 30,
                        "cost_usd": cost[e] * (1 + rng.random() * 0.1),
                    }
                )
    return rows


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.one_of(st.none(), st.floats(-50, 50)), min_size=2, max_size=6),
        min_size=1,
        max_size=10,
    ).filter(lambda m: len({len(r) for r in m}) == 1),
    st.floats(0.01, 10.0),
)
def test_soft_labels_sum_to_one_and_respect_masks(
    cells: list[list[float | None]], t: float
) -> None:
    values = np.array([[np.nan if c is None else c for c in row] for row in cells])
    labels, mask = soft_labels(values, t)
    assert np.array_equal(mask, ~np.isnan(values))
    assert np.all(labels[~mask] == 0.0)
    assert np.all(labels >= 0)
    sums = labels.sum(axis=1)
    has = mask.any(axis=1)
    assert np.allclose(sums[has], 1.0)
    assert np.all(sums[~has] == 0.0)
    # order is preserved: a higher value never gets a lower label
    for row, lab, mk in zip(values, labels, mask, strict=True):
        v, lb = row[mk], lab[mk]
        assert np.all((v[:, None] > v[None, :]) <= (lb[:, None] >= lb[None, :]))


def test_masked_expert_is_excluded_not_zeroed() -> None:
    labels, _ = soft_labels(np.array([[1.0, np.nan, 1.0], [0.0, 0.0, 0.0]]), 1.0)
    assert labels[0].tolist() == pytest.approx([0.5, 0.0, 0.5])  # not 1/3 each
    assert labels[1].tolist() == pytest.approx([1 / 3] * 3)


def test_temperature_sharpens() -> None:
    v = np.array([[0.9, 0.5]])
    assert soft_labels(v, 0.05)[0][0, 0] > soft_labels(v, 1.0)[0][0, 0] > 0.5


def test_nll_is_negated_and_metrics_oriented() -> None:
    m = build_matrix(synthetic_rows(5))
    big = m.experts.index("big")
    math_rows = [i for i, d in enumerate(m.datasets) if d == "math"]
    for metric in ("bertsim", "nll", "correct"):
        vals = metric_values(m, LabelSpec(metric=metric))
        assert np.all(np.argmax(vals[math_rows], axis=1) == big), metric


def test_trilemma_cost_weight_moves_the_label_to_the_cheap_expert() -> None:
    rows = [r for r in synthetic_rows(5) if r["expert"] in ("big", "small")]
    for r in rows:
        r["bertsim"] = 0.8 if r["expert"] == "big" else 0.75
    m = build_matrix(rows)
    pure = metric_values(m, LabelSpec(metric="trilemma", cost_weight=0.0))
    costly = metric_values(m, LabelSpec(metric="trilemma", cost_weight=0.5))
    assert np.all(np.array(m.experts)[np.argmax(pure, axis=1)] == "big")
    assert np.all(np.array(m.experts)[np.argmax(costly, axis=1)] == "small")


def test_missing_metric_column_names_it() -> None:
    rows = synthetic_rows(5)
    for r in rows:
        r["bertsim"] = None
    with pytest.raises(TableError, match="'bertsim'"):
        metric_values(build_matrix(rows), LabelSpec(metric="bertsim"))


def test_one_expert_is_an_error() -> None:
    with pytest.raises(TableError, match="at least two"):
        build_matrix([r for r in synthetic_rows(5) if r["expert"] == "big"])


def test_split_is_seeded_per_dataset_and_deterministic() -> None:
    m = build_matrix(synthetic_rows(20))
    train, test = split_indices(m, seed=3)
    assert np.array_equal(test, split_indices(m, seed=3)[1])
    assert not np.array_equal(test, split_indices(m, seed=4)[1])
    assert set(train).isdisjoint(test) and len(train) + len(test) == len(m)
    for ds in ("math", "code"):
        assert sum(m.datasets[i] == ds for i in test) == 4  # 20% of 20


def test_split_column_is_honoured() -> None:
    m = build_matrix(synthetic_rows(10, split=True))
    _, test = split_indices(m, seed=0)
    assert all(m.query_ids[i].endswith(("-0", "-5")) for i in test)


def test_empty_split_is_an_error() -> None:
    rows = synthetic_rows(5, split=True)
    for r in rows:
        r["split"] = "train"
    with pytest.raises(TableError, match="test split is empty"):
        split_indices(build_matrix(rows), seed=0)
    with pytest.raises(TableError, match="test split is empty"):
        split_indices(build_matrix(synthetic_rows(1)), seed=0)


def test_partial_split_column_is_honoured_and_the_rest_split_per_dataset() -> None:
    rows = synthetic_rows(20)
    for r in rows:
        if r["dataset"] == "math":
            r["split"] = "train"
    m = build_matrix(rows)
    train, test = split_indices(m, seed=0)
    assert {m.datasets[i] for i in test} == {"code"} and len(test) == 4
    assert sum(m.datasets[i] == "math" for i in train) == 20


def test_subsample_is_capped_balanced_and_seeded() -> None:
    from export.labels import subsample_per_dataset

    datasets = ["a"] * 90 + ["b"] * 10
    idx = np.arange(100)
    got = subsample_per_dataset(idx, datasets, 20, seed=1)
    assert len(got) == 20 and sum(datasets[i] == "b" for i in got) == 10
    assert np.array_equal(got, subsample_per_dataset(idx, datasets, 20, seed=1))
    assert np.array_equal(subsample_per_dataset(idx, datasets, None, seed=1), idx)
