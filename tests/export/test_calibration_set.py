"""The shipped calibration set: gradable by our graders, spread over datasets and difficulty,
and disjoint from every query of the pooled corpus (committed table + public tables)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from export.calibration_set import (
    build,
    corpus_keys,
    load_calibration_set,
    mixtral_mmlu_accuracy,
    query_keys,
)
from export.importers import IMPORTERS
from export.metrics import LETTERS, grade
from export.pool import normalise_key
from export.table import read_table

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def public() -> list[list[dict[str, Any]]]:
    return [list(f(SHARED)) for f in IMPORTERS.values()]


@pytest.fixture(scope="module")
def keys(public: list[list[dict[str, Any]]]) -> set[str]:
    return corpus_keys([read_table(ROOT / "artifacts" / "expert_table.jsonl.gz"), *public])


def test_size_and_spread() -> None:
    qs = load_calibration_set()
    assert 150 <= len(qs) <= 250
    assert len({q.query_id for q in qs}) == len(qs)
    per = Counter(q.dataset for q in qs)
    assert set(per) == {"gsm8k", "mbpp", "pubmedqa", "mmlu"} and min(per.values()) >= 45
    for name in per:
        assert len({q.extra["difficulty"] for q in qs if q.dataset == name}) >= 3


def test_a_smaller_run_takes_the_first_queries_of_each_dataset() -> None:
    """The set grew from 80 to 200 by appending: `--queries 80` still sends the first 80
    (answers already collected for them stay valid), and every prefix is balanced."""
    from export.experts_calibrate import spread

    qs = load_calibration_set()
    assert {q.query_id for q in spread(qs, 80)} == {q.query_id for q in qs[:80]}
    for n in (20, 100, 200):
        per = Counter(q.dataset for q in spread(qs, n))
        assert max(per.values()) - min(per.values()) <= 1 and sum(per.values()) == n


def test_disjoint_from_the_pooled_corpus(keys: set[str]) -> None:
    qs = load_calibration_set()
    assert len(keys) > 25000
    assert not [q.query_id for q in qs if query_keys(q) & keys]
    assert not [q.query_id for q in qs if normalise_key(q.prompt) in keys]


def test_shipped_set_is_what_the_builder_makes(
    keys: set[str], public: list[list[dict[str, Any]]]
) -> None:
    accuracy = mixtral_mmlu_accuracy(r for t in public for r in t)
    assert build(SHARED, keys, accuracy) == load_calibration_set()


def test_every_query_is_graded_by_our_graders() -> None:
    for q in load_calibration_set():
        if q.dataset == "mbpp":
            assert grade(q, f"```python\n{q.reference}\n```") == 1.0, q.query_id
            continue
        assert q.answer
        if q.dataset == "gsm8k":
            right, wrong = f"So the answer is:\n#### {q.answer}", "#### -12345"
        elif q.dataset == "pubmedqa":
            right = f"{q.answer.capitalize()}."
            wrong = "Maybe." if q.answer != "maybe" else "No."
        else:
            choices = q.extra["choices"]
            i = LETTERS.index(q.answer)
            other = (i + 1) % len(choices)
            right, wrong = f"{q.answer}) {choices[i]}", f"{LETTERS[other]}) {choices[other]}"
        assert grade(q, right) == 1.0 and grade(q, wrong) == 0.0, q.query_id


def test_mmlu_test_ids_are_routellms(public: list[list[dict[str, Any]]]) -> None:
    from export.datasets import load_mmlu

    routellm = public[list(IMPORTERS).index("routellm-mmlu")]
    assert {q.query_id for q in load_mmlu(SHARED)} == {r["query_id"] for r in routellm}
