"""Re-grading joined cloud outcomes with our graders, on real RouterBench and RouteLLM rows."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from export.datasets import load_dataset
from export.importers import GPT4, MIXTRAL, join_cloud
from export.metrics import GRADERS
from export.regrade import map_arc_answer, regrade_rows
from export.table import read_table, write_table
from export.table_cli import run

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def joined() -> list[dict[str, Any]]:
    """Cloud rows as ``table join`` made them before re-grading (source labels, no grader)."""
    gsm = {q.query_id: q for q in load_dataset("gsm8k", SHARED)}
    arc = [q for q in load_dataset("arc", SHARED) if q.query_id in ("arc-c-887", "arc-c-5",
                                                                     "arc-c-100")]
    queries = arc + [gsm["gsm8k-test-257"], gsm["gsm8k-test-2"]]
    collected = [{"query_id": q.query_id, "dataset": q.dataset, "query": q.prompt,
                  "expert": "local"} for q in queries]
    rows = join_cloud(collected, SHARED, bertsim=None)
    return [dict(r, grader=None, source=None) for r in rows]


def test_map_arc_answer_through_the_sources_options() -> None:
    theirs = ["excretory", "endocrine", "digestive", "reproductive"]
    ours = ["reproductive", "excretory", "digestive", "endocrine"]
    assert map_arc_answer("A", theirs, ours) == 1
    assert map_arc_answer("D\n", theirs, ours) == 0
    assert map_arc_answer("I cannot tell.", theirs, ours) == -1  # chose none: graded wrong
    assert map_arc_answer("A", ["lungs", "skin"], ours) is None  # not among ours: dropped


def test_regrade_real_cloud_rows(joined: list[dict[str, Any]]) -> None:
    rows, counts = regrade_rows(joined, SHARED)
    by = {(r["query_id"], r["expert"]): r for r in rows}
    # "$45.00" for gold 45: RouteLLM's grader said wrong, ours says right
    before = {(r["query_id"], r["expert"]): r for r in joined}
    assert before[("gsm8k-test-257", GPT4)]["correct"] == 0.0
    assert by[("gsm8k-test-257", GPT4)]["correct"] == 1.0
    assert by[("gsm8k-test-257", GPT4)]["grader"] == GRADERS["gsm8k"]
    assert by[("gsm8k-test-257", GPT4)]["response"]  # RouteLLM is Apache-2.0: text kept
    # arc-c-887: RouterBench's letter B is its option "There is greater variation ...",
    # our option A; our gold is B, so the row becomes wrong
    assert before[("arc-c-887", GPT4)]["response"].strip() == "B"
    assert by[("arc-c-887", GPT4)]["correct"] == 0.0
    for r in rows:
        assert r["source"] in ("routerbench", "routellm-gsm8k")
        assert r["grader"] == GRADERS[r["dataset"]]
        if r["source"] == "routerbench":  # no license file: scores only
            assert r["response"] is None and r["bertsim"] is None
    md = counts.markdown()
    assert f"| gsm8k | {GPT4} | 2 | 2 | 1 | 0 | 0 | 0 |" in md
    assert f"| arc | {MIXTRAL} | 3 | 3 |" in md


def test_regrade_is_idempotent(joined: list[dict[str, Any]], tmp_path: Path) -> None:
    once, _ = regrade_rows(joined, SHARED)
    twice, counts = regrade_rows(once, SHARED)
    assert twice == once
    assert {o for _d, _e, o in counts.counts} == {"already current"}
    # and through the command, file to file
    a, b, c = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz", tmp_path / "c.jsonl.gz"
    write_table(a, joined)
    for src, dst in ((a, b), (b, c)):
        assert run(argparse.Namespace(table_cmd="regrade", table=src, out=dst,
                                      data_dir=SHARED)) == 0
    assert read_table(b) == read_table(c)


def test_mbpp_cloud_rows_keep_routerbenchs_label() -> None:
    q = next(q for q in load_dataset("mbpp", SHARED) if q.query_id == "mbpp-11")
    row = {"query_id": q.query_id, "dataset": "mbpp", "query": q.prompt, "expert": GPT4,
           "response": "def f(): pass", "correct": 1.0}
    rows, counts = regrade_rows([row], SHARED)
    assert rows[0]["correct"] == 1.0 and rows[0]["grader"] == "routerbench/label"
    assert rows[0]["response"] is None
    assert counts.counts[("mbpp", GPT4, "kept source grader")] == 1


def test_committed_table_is_regraded() -> None:
    rows = read_table(ROOT / "artifacts" / "expert_table.jsonl.gz")
    assert all(r["source"] and (r["grader"] or r["correct"] is None) for r in rows)
    assert not any(r["response"] for r in rows if r["source"] == "routerbench")
    ours = [r for r in rows if r["dataset"] != "mbpp" or r["source"] == "collected"]
    assert all(r["grader"] == GRADERS[r["dataset"]] for r in ours)
    again, _ = regrade_rows(rows, SHARED)
    assert again == rows


def test_zeroeval_and_mmlu_pro_rows_get_our_graders(small_data: Path) -> None:
    from export.importers import IMPORTERS

    rows = [r for name in ("zeroeval", "mmlu-pro") for r in IMPORTERS[name](small_data)]
    once, counts = regrade_rows(rows, small_data)
    assert len(once) == len(rows)  # nothing dropped
    assert all(r["grader"] == GRADERS[r["dataset"]] for r in once)
    by = {(r["query_id"], r["expert"]): r for r in once}
    # o1-mini's CRUXEval item 0 is right; its response (Apache-2.0) is kept
    assert by[("cruxeval-0", "o1-mini-2024-09-12")]["correct"] == 1.0
    assert by[("cruxeval-0", "o1-mini-2024-09-12")]["response"]
    # MMLU-Pro: the extracted letter against the newest key; a missing letter is wrong
    assert by[("mmlupro-70", "meta-llama/Llama-2-70b-hf")]["correct"] == 0.0
    assert by[("mmlupro-71", "gpt-4o-2024-05-13")]["correct"] == 1.0
    nulls = [r for r in once if r["dataset"] == "mmlu-pro" and r["response"] is None]
    assert nulls and all(r["correct"] == 0.0 for r in nulls)
    assert counts.counts[("mmlu-pro", "gpt-4o-2024-05-13", "re-graded, same")] == 3
    twice, again = regrade_rows(once, small_data)
    assert twice == once and {o for _d, _e, o in again.counts} == {"already current"}
