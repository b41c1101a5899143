"""Dataset loaders on the real staged data, plus bad files that must fail clearly."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from export.datasets import (
    load_arc,
    load_dataset,
    load_gsm8k,
    load_mbpp,
    load_pubmedqa,
    load_user_jsonl,
    sample,
    shared_data_dir,
)
from export.errors import DatasetError


def test_real_datasets_have_expected_sizes_and_fields() -> None:
    arc = load_arc()
    assert len(arc) == 1172 + 2376
    assert {q.answer for q in arc} <= set("ABCD")
    assert all(q.reference.startswith(f"{q.answer}) ") for q in arc)
    gsm = load_gsm8k()
    assert len(gsm) == 1319 and all("<<" not in q.reference for q in gsm)
    assert gsm[0].answer == "18"
    mbpp = load_mbpp()
    assert len(mbpp) == 974 and all(len(q.tests) >= 3 for q in mbpp)
    pub = load_pubmedqa()
    assert len(pub) == 1000 and {q.answer for q in pub} == {"yes", "no", "maybe"}
    ids = [q.query_id for q in arc + gsm + mbpp + pub]
    assert len(set(ids)) == len(ids)


def test_sampling_is_seeded_and_respects_the_filter() -> None:
    pool = load_mbpp()
    a, b, c = sample(pool, 20, 1), sample(pool, 20, 1), sample(pool, 20, 2)
    assert [q.query_id for q in a] == [q.query_id for q in b]
    assert [q.query_id for q in a] != [q.query_id for q in c]
    odd = sample(pool, 20, 1, keep=lambda q: q.extra["task_id"] % 2 == 1)
    assert all(q.extra["task_id"] % 2 == 1 for q in odd)
    assert len(sample(pool, None, 0)) == 974


def test_env_override_of_shared_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEROUTE_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    with pytest.raises(DatasetError, match="EDGEROUTE_SHARED_DATA"):
        load_dataset("gsm8k")


def test_bad_gsm8k_line_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "gsm8k").mkdir()
    path = tmp_path / "gsm8k" / "test.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"question": "1+1?", "answer": "2\n#### 2"}) + "\n")
        f.write('{"question": "broken"\n')
    with pytest.raises(DatasetError, match=r"test\.jsonl\.gz:2: not valid JSON"):
        load_gsm8k(tmp_path)


def test_missing_field_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "arc").mkdir()
    path = tmp_path / "arc" / "arc_challenge_test.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"query": "Question: x?", "choices": ["a", "b"], "gold": 1}) + "\n")
        f.write(json.dumps({"query": "Question: y?", "choices": ["a", "b"], "gold": 7}) + "\n")
    with pytest.raises(DatasetError, match=r"arc_challenge_test\.jsonl\.gz:2: field 'gold'"):
        load_arc(tmp_path, subsets=("challenge",))


def test_user_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps({"prompt": "Say hi", "reference": "hi"}) + "\n\n"
        + json.dumps({"prompt": "2+2?", "reference": "4", "dataset": "math", "id": "q2"}) + "\n"
    )
    qs = load_user_jsonl(path)
    assert [(q.query_id, q.dataset) for q in qs] == [("user-1", "user"), ("q2", "math")]
    path.write_text(json.dumps({"prompt": "no reference"}) + "\n")
    with pytest.raises(DatasetError, match=r"mine\.jsonl:1: field 'reference'"):
        load_user_jsonl(path)
