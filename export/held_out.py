"""A router's held-out queries of a table: the test split it was trained without, found
again from its router.json (seed, test fraction, label rule), so evaluate, calibrate,
replay and export's gates all score it on the same queries.

Its own module, above ``export.labels`` (the split and label rules) and
``export.routers.base`` (router.json): labels need no router to be made, and a router's
metadata needs no table.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from export.errors import TableError
from export.labels import (
    OutcomeMatrix,
    build_matrix,
    labelled_rows,
    metric_values,
    split_indices,
    subsample_per_dataset,
    table_sha256,
)
from export.routers.base import RouterMeta


class HeldOut(NamedTuple):
    """A router's held-out queries of a table (see :func:`held_out`)."""

    matrix: OutcomeMatrix  # the whole table, the router's experts
    test: OutcomeMatrix  # its test queries that have a label value
    values: np.ndarray  # the router's label metric on them (higher is better)
    train: np.ndarray  # the train split's row indices into ``matrix``


def check_held_out(table: Path, meta: RouterMeta) -> None:
    """Refuse to report on a test split the router trained on (``train --all-rows``)."""
    if meta.extra.get("trained_on") and meta.table_sha256 == table_sha256(table):
        raise TableError(f"the router trained on every row of {table} (--all-rows), its test "
                         "split included: evaluate the split-trained router instead")


def held_out(table: Path, meta: RouterMeta, max_test: int | None = None) -> HeldOut:
    """The router's test split of ``table``: the seed, test fraction and label rule it was
    trained with, so evaluate, calibrate and export's gates all score it on the same
    queries, none of which it trained on. ``max_test``: a seeded sample, even over datasets.
    """
    from export.table import read_table

    m = build_matrix(read_table(table), meta.experts)
    absent = [
        e
        for j, e in enumerate(m.experts)
        if all(np.isnan(m.values[c][:, j]).all() for c in ("bertsim", "correct", "nll"))
    ]
    if absent:
        raise TableError(f"table {table} has no outcomes for expert(s) {absent} the router knows")
    values = metric_values(m, meta.labels())
    train, test = split_indices(m, meta.seed, meta.test_fraction)
    test = np.intersect1d(test, labelled_rows(values))
    test = subsample_per_dataset(test, m.datasets, max_test, meta.seed)
    if len(test) == 0:
        raise TableError(f"no test query of {table} has a {meta.metric!r} value")
    return HeldOut(m, m.subset(test), values[test], train)
