"""Pooling tables: one query per question across sources, on real prompts of every source."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from export.datasets import load_dataset
from export.importers import GPT4, IMPORTERS, MIXTRAL
from export.pool import infer_provenance, pool_rows, pool_tables, question_key
from export.table import read_table, write_table
from export.table_cli import run

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
ROOT = Path(__file__).resolve().parents[2]


def row(qid: str, query: str, expert: str, **kw: Any) -> dict[str, Any]:
    return {"query_id": qid, "dataset": kw.pop("dataset", "gsm8k"), "query": query,
            "expert": expert, **kw}


def test_same_question_in_two_templates_is_one_query() -> None:
    q = load_dataset("gsm8k", SHARED)[0]
    ours = [row(q.query_id, q.prompt, "qwen", source="collected", correct=1.0),
            row(q.query_id, q.prompt, GPT4, source="routellm-gsm8k", correct=1.0)]
    theirs = [row("routerdc-gsm8k-test-0", q.source_text, "m7b", source="routerdc", split="test",
                  correct=0.5),
              row("x-1", q.source_text.upper() + " ", GPT4, source="routellm-gsm8k",
                  correct=0.0)]
    rows, stats = pool_rows([ours, theirs])
    assert {r["query_id"] for r in rows} == {q.query_id}  # the first table's id is kept
    assert sorted(r["expert"] for r in rows) == sorted(["qwen", GPT4, "m7b"])
    assert [r["correct"] for r in rows if r["expert"] == GPT4] == [1.0]  # first one wins
    assert stats.duplicates == {("routellm-gsm8k", "gsm8k", GPT4): 1}
    assert {r["split"] for r in rows} == {"test"}  # a source's test question stays test
    assert stats.shared_queries == 1


def test_different_prompts_of_one_source_stay_apart() -> None:
    """MBPP 217 and 602 ask the same thing with different tests: two queries, and a public
    row of that question joins the first."""
    mbpp = {q.query_id: q for q in load_dataset("mbpp", SHARED)}
    a, b = mbpp["mbpp-217"], mbpp["mbpp-602"]
    assert question_key(a.prompt) == question_key(b.prompt)
    ours = [row(q.query_id, q.prompt, "qwen", dataset="mbpp") for q in (a, b)]
    public = [row("routerbench-9", a.source_text, "claude-v1", dataset="mbpp",
                  source="routerbench")]
    rows, _ = pool_rows([ours, public])
    assert [(r["query_id"], r["expert"]) for r in rows] == [
        ("mbpp-217", "qwen"), ("mbpp-602", "qwen"), ("mbpp-217", "claude-v1")]


def test_split_train_and_null_and_id_clash() -> None:
    rows, stats = pool_rows([
        [row("q1", "What is 2+2?", "a", split="train"), row("q2", "Name a colour.", "a")],
        [row("q1", "Something else entirely?", "b", source="routerdc")],
    ])
    by = {(r["query_id"], r["expert"]): r for r in rows}
    assert by[("q1", "a")]["split"] == "train" and by[("q2", "a")]["split"] is None
    assert by[("q1~2", "b")]["query"] == "Something else entirely?"  # different question
    assert stats.splits == {"train": 1, "None": 2}


def test_provenance_inferred_for_tables_without_it() -> None:
    assert infer_provenance({"query_id": "arc-c-1", "dataset": "arc", "expert": "qwen",
                             "correct": 1.0}) == ("collected", "edgeroute-arc/1")
    assert infer_provenance({"query_id": "gsm8k-test-1", "dataset": "gsm8k",
                             "expert": MIXTRAL, "correct": 0.0}) == (
        "routellm-gsm8k", "routellm-gsm8k/label")
    assert infer_provenance({"query_id": "arc-c-1", "dataset": "arc", "expert": GPT4,
                             "correct": 1.0})[0] == "routerbench"
    assert infer_provenance({"query_id": "x", "dataset": "d", "expert": "e", "source": "s",
                             "grader": "g/1"}) == ("s", "g/1")


def test_real_tables_join_on_the_question() -> None:
    """Our prompts, RouterDC's, RouterBench's and RouteLLM's meet on the same questions:
    every GSM8K test question is in RouterDC and RouteLLM, every ARC-Challenge question in
    RouterDC, and RouterBench's ARC rows join ours (SOURCE.md's counts)."""
    ours = [row(q.query_id, q.prompt, "qwen", dataset=q.dataset)
            for name in ("gsm8k", "arc") for q in load_dataset(name, SHARED)
            if q.query_id.startswith(("gsm8k", "arc-c"))]
    public = [r for name in ("routerdc", "routellm-gsm8k", "routerbench")
              for r in IMPORTERS[name](SHARED)
              if r["dataset"] in ("gsm8k", "arc", "arc_challenge")]
    rows, _ = pool_rows([ours, public])
    experts: dict[str, set[str]] = {}
    for r in rows:
        experts.setdefault(r["query_id"], set()).add(r["source"])
    gsm = [s for q, s in experts.items() if q.startswith("gsm8k-test-")]
    assert len(gsm) == 1319
    assert all(s >= {"collected", "routerdc", "routellm-gsm8k"} for s in gsm)
    arc = [s for q, s in experts.items() if q.startswith("arc-c-")]
    assert len(arc) == 1172  # 2 stems repeat with other options: RouterDC joins the first
    assert sum("routerdc" in s for s in arc) == 1170
    assert sum("routerbench" in s for s in arc) >= 1160
    assert not any(q.startswith("routerdc-gsm8k-test") for q in experts)  # all joined


def test_mmlu_joins_routellm_and_routerdc_and_chinese_stays_apart() -> None:
    rdc = [r for r in IMPORTERS["routerdc"](SHARED)
           if r["dataset"] in ("mmlu", "cmmlu") and r["expert"] == "mistralai/Mistral-7B-v0.1"]
    rllm = [r for r in IMPORTERS["routellm-mmlu"](SHARED) if r["expert"] == GPT4]
    rows, stats = pool_rows([rllm, rdc])
    shared = {r["query_id"] for r in rows if r["source"] == "routerdc"} & {
        r["query_id"] for r in rows if r["source"] == "routellm-mmlu"}
    assert len(shared) >= 6000  # 2,000 + 4,211 of RouterDC's MMLU are in the MMLU test set
    cmmlu = [r for r in rows if r["dataset"] == "cmmlu"]
    assert len({r["query_id"] for r in cmmlu}) >= len(cmmlu) - 5  # Chinese text keeps its key


def test_pool_tables_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl"
    write_table(a, [row("q1", "What is 2+2?", "x", correct=1.0, source="collected",
                        grader="edgeroute-gsm8k/1")])
    write_table(b, [row("p9", "what is 2 + 2", "y", correct=0.0, source="routerdc",
                        grader="routerdc/soft-score")])
    rows = pool_tables([a, b])
    assert [(r["query_id"], r["expert"]) for r in rows] == [("q1", "x"), ("q1", "y")]
    out = tmp_path / "p.jsonl.gz"
    assert run(argparse.Namespace(table_cmd="pool", tables=[a, b], out=out)) == 0
    text = capsys.readouterr().out
    assert "| routerdc | gsm8k | y | 1 | 0.000 | routerdc/soft-score |" in text
    assert "1 queries in more than one source" in text
    assert [r["source"] for r in read_table(out)] == ["collected", "routerdc"]


def test_zeroeval_gsm8k_joins_our_gsm8k_and_keeps_our_ids(small_data: Path) -> None:
    q = load_dataset("gsm8k", SHARED)[0]
    ours = [row(q.query_id, q.prompt, "qwen", source="collected")]
    zero = [r for r in IMPORTERS["zeroeval"](small_data) if r["dataset"] == "gsm8k"]
    assert question_key(zero[0]["query"]) == question_key(q.prompt)
    rows, stats = pool_rows([ours, zero])
    assert {r["query_id"] for r in rows} == {"gsm8k-test-1", "gsm8k-test-2"}
    assert stats.shared_queries == 1 and not stats.duplicates


def test_mmlu_pro_joins_routerarena_on_question_and_options() -> None:
    """RouterArena shows 236 MMLU-Pro questions with their options in another template;
    SOURCE.md finds 229 of them in MMLU-Pro by text."""
    from export.datasets import load_mmlu_pro

    pro = [row(q.query_id, q.prompt, "m", dataset="mmlu-pro", source="mmlu-pro")
           for q in load_mmlu_pro(SHARED)]
    arena = [r for r in IMPORTERS["routerarena"](SHARED) if r["dataset"] == "mmlupro"]
    rows, _ = pool_rows([pro, arena])
    joined = {r["query_id"] for r in rows if r["source"] == "routerarena"}
    assert len({r["query_id"] for r in arena}) == 236
    assert 225 <= sum(q.startswith("mmlupro-") for q in joined) <= 236


def test_pooling_keeps_every_older_sources_expert_names() -> None:
    """The alias table (agent.model_names) canonicalises names in the pool: the names of
    the tables before issue #28 stay what they were, RouterBench's Mixtral aside."""
    from agent.model_names import ModelNames

    names = ModelNames.of()
    older = {r["expert"] for s in ("routerbench", "routellm-gsm8k", "routerdc", "routerarena")
             for r in IMPORTERS[s](SHARED)}
    older |= {r["expert"] for r in read_table(ROOT / "artifacts" / "expert_table.jsonl.gz")}
    renamed = {e: names.canonical(e) for e in older if names.canonical(e) not in (None, e)}
    assert renamed == {"mistralai/mixtral-8x7b-chat": MIXTRAL}
