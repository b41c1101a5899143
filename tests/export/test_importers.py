"""Importers on the real public routing tables: round-trip through the table format,
joins onto our queries, and clear errors for bad files."""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import re
from pathlib import Path

import pytest

from export.datasets import load_dataset
from export.errors import DatasetError
from export.importers import (
    GPT4,
    IMPORTERS,
    MIXTRAL,
    cost_at,
    join_cloud,
    joinable_filters,
)
from export.table import read_table, write_table
from export.table_cli import run

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.parametrize("source,experts,min_rows", [
    ("routerbench", 11, 3178 * 11),
    ("routellm-gsm8k", 2, 1319 * 2),
    ("routerarena", 2, 809 * 2),
])
def test_import_round_trips(source: str, experts: int, min_rows: int, tmp_path: Path) -> None:
    rows = list(IMPORTERS[source](SHARED))
    assert len(rows) == min_rows
    assert len({r["expert"] for r in rows}) == experts
    out = tmp_path / "t.jsonl.gz"
    assert write_table(out, rows) == len(rows)
    back = read_table(out)
    assert [(r["query_id"], r["expert"], r["correct"]) for r in back] == [
        (r["query_id"], r["expert"], r["correct"]) for r in rows
    ]


def test_routellm_gsm8k_matches_gsm8k_and_accuracy() -> None:
    rows = list(IMPORTERS["routellm-gsm8k"](SHARED))
    acc = {e: sum(r["correct"] for r in rows if r["expert"] == e) / 1319 for e in (GPT4, MIXTRAL)}
    assert acc[GPT4] == pytest.approx(0.857, abs=0.002)  # SOURCE.md figures
    assert acc[MIXTRAL] == pytest.approx(0.638, abs=0.002)
    assert all(r["reference"] and r["cost_usd"] > 0 for r in rows)


def test_routerbench_costs_and_prices_agree() -> None:
    """Our Mixtral price reproduces RouterBench's cost column within token-estimate error."""
    rows = [r for r in IMPORTERS["routerbench"](SHARED) if r["dataset"] == "arc"]
    mix = [r for r in rows if r["expert"] == "mistralai/mixtral-8x7b-chat" and r["cost_usd"]]
    ratio = sum(cost_at(MIXTRAL, r["input_tokens"], r["output_tokens"]) for r in mix) / sum(
        r["cost_usd"] for r in mix)
    assert 0.9 < ratio < 1.1


def test_joinable_filters_and_join() -> None:
    keep = joinable_filters(SHARED)
    arc = [q for q in load_dataset("arc", SHARED) if keep["arc"](q)]
    mbpp = [q for q in load_dataset("mbpp", SHARED) if keep["mbpp"](q)]
    assert len(arc) >= 1100 and all(q.query_id.startswith("arc-c-") for q in arc)
    assert len(mbpp) >= 150
    collected = [
        {"query_id": q.query_id, "dataset": q.dataset, "query": q.prompt, "expert": "local"}
        for q in arc[:3] + mbpp[:3] + load_dataset("gsm8k", SHARED)[:3]
    ]
    rows = join_cloud(collected, SHARED, bertsim=None)
    assert len(rows) == 9 * 2
    assert {r["expert"] for r in rows} == {GPT4, MIXTRAL}
    assert all(r["response"] and r["correct"] in (0.0, 1.0) and r["cost_usd"] > 0 for r in rows)
    gpt = [r for r in rows if r["expert"] == GPT4]
    mix = [r for r in rows if r["expert"] == MIXTRAL]
    assert sum(r["cost_usd"] for r in gpt) > 5 * sum(r["cost_usd"] for r in mix)


def test_bad_csv_names_file_and_line(tmp_path: Path) -> None:
    folder = tmp_path / "routing-routerbench-subset"
    folder.mkdir()
    src = SHARED / "routing-routerbench-subset" / "arc_challenge_test.csv.gz"
    with gzip.open(src, "rt", newline="") as f:
        reader = csv.reader(f)
        header, first, second = next(reader), next(reader), next(reader)
    second[header.index("gpt-4-1106-preview|model_response")] = "['unterminated"
    with gzip.open(folder / "arc_challenge_train.csv.gz", "wt", newline="") as f:
        csv.writer(f).writerows([header, first, second])
    with pytest.raises(DatasetError, match=r"arc_challenge_train\.csv\.gz:3: not a Python list"):
        list(IMPORTERS["routerbench"](tmp_path))


def test_cli_import_without_bertsim(tmp_path: Path) -> None:
    out = tmp_path / "arena.jsonl"
    args = argparse.Namespace(table_cmd="import", sources=["routerarena"], out=out,
                              no_bertsim=True, data_dir=SHARED)
    assert run(args) == 0
    rows = read_table(out)
    assert len(rows) == 1618 and sum(r["cost_usd"] for r in rows) == pytest.approx(0.18, abs=0.01)


def test_summary_lists_each_expert_and_dataset() -> None:
    from export.table_cli import summary_markdown

    rows = [
        {"expert": "a", "dataset": "x", "bertsim": 0.5, "correct": 1.0, "cost_usd": 0.0,
         "source": "collected", "grader": "edgeroute-x/1"},
        {"expert": "a", "dataset": "x", "bertsim": 0.7, "correct": 0.0, "cost_usd": 0.0,
         "source": "collected", "grader": "edgeroute-x/1"},
        {"expert": "b", "dataset": "x", "bertsim": None, "correct": None, "cost_usd": 0.01},
    ]
    text = summary_markdown(rows)
    assert "| collected | x | a | 2 | 0.500 | edgeroute-x/1 | - | 0.600 |" in text
    assert "| - | x | b | 1 | - | - | - | - |" in text


def test_select_keeps_experts_and_complete_queries() -> None:
    from export.table_cli import select_experts

    rows = [
        {"query_id": "q1", "expert": "a"}, {"query_id": "q1", "expert": "b"},
        {"query_id": "q1", "expert": "c"}, {"query_id": "q2", "expert": "a"},
    ]
    kept, header = select_experts(rows, "a,b", complete=False)
    assert [(r["query_id"], r["expert"]) for r in kept] == [("q1", "a"), ("q1", "b"),
                                                             ("q2", "a")]
    kept, _ = select_experts(rows, "a,b", complete=True)
    assert {r["query_id"] for r in kept} == {"q1"}
    assert header["experts"] == ["a", "b"]


def test_select_names_unknown_experts() -> None:
    import pytest

    from export.errors import TableError
    from export.table_cli import select_experts

    with pytest.raises(TableError, match="zzz"):
        select_experts([{"query_id": "q", "expert": "a"}], "a,zzz", complete=False)


# -- ZeroEval and MMLU-Pro: a few real rows of each file -------------------------------
def test_every_table_is_registered_under_its_source_name() -> None:
    from export.table_sources import SOURCE_GRADERS, SOURCES

    assert tuple(IMPORTERS) == SOURCES and set(SOURCE_GRADERS) == set(SOURCES)


def test_zeroeval_rows(small_data: Path) -> None:
    rows = list(IMPORTERS["zeroeval"](small_data))
    assert len(rows) == 84 + 96 + 80
    by = {(r["query_id"], r["expert"]): r for r in rows}
    assert {r["dataset"] for r in rows} == {"gsm8k", "cruxeval", "math"}
    assert {r["query_id"] for r in rows} == {"gsm8k-test-1", "gsm8k-test-2", "cruxeval-0",
                                             "cruxeval-1", "math-l5-0", "math-l5-1"}
    gsm = by[("gsm8k-test-1", "Nexusflow/Athene-70B")]  # SOURCE.md's example row
    assert gsm["correct"] == 1.0 and gsm["grader"] == "zeroeval/label-gsm"
    assert gsm["reference"] == load_dataset("gsm8k", SHARED)[0].reference
    assert gsm["output_tokens"] == 50 and gsm["response"].endswith('"answer": "18"\n}')
    assert gsm["query"].startswith("\n## Question: \n\nJanet’s ducks lay 16 eggs")
    # a reply cut to its tail keeps its full length: output_len 9522 -> 2381 tokens
    cut = by[("math-l5-0", "meta-llama/Meta-Llama-3.1-70B-Instruct")]
    assert len(cut["response"]) == 1500 and cut["output_tokens"] == 2381
    # ZeroEval's undated Gemini ran as -001; today's name means -002 (agent.model_names)
    assert ("cruxeval-0", "gemini-1.5-pro-001") in by
    assert all(r["source"] == "zeroeval" and r["output_tokens"] for r in rows)
    assert {r["grader"] for r in rows if r["dataset"] == "math"} == {"zeroeval/label-math-l5"}


def test_zeroeval_rules_reproduce_its_published_accuracy() -> None:
    """ZeroEval's own CRUXEval and MATH rules on its extracted answers, for four models
    (SOURCE.md's table), read from the full files."""
    from export.zeroeval import crux_label, math_label

    published = {("crux", "claude-3-5-sonnet-20240620"): 78.75, ("crux", "gemma-2-2b-it"): 20.75,
                 ("math-l5", "gpt-4o-2024-08-06"): 55.34, ("math-l5", "o1-mini-2024-09-12"): 89.32}
    for (task, model), acc in published.items():
        rule = crux_label if task == "crux" else math_label
        needle = f'"model": "{model}"'
        with gzip.open(SHARED / "routing-zeroeval" / f"{task}.jsonl.gz", "rt") as f:
            labels = [rule(o["extracted"], o["gold"]) for o in map(json.loads,
                      (line for line in f if needle in line))]
        assert round(100 * sum(labels) / len(labels), 2) == acc


def test_every_model_of_both_tables_has_a_profile_name() -> None:
    from agent.model_names import ModelNames
    from export.zeroeval import RENAMES

    names, found = ModelNames.of(), {}
    for path in [*(SHARED / "routing-zeroeval").glob("*.jsonl.gz"),
                 SHARED / "routing-mmlu-pro" / "outcomes.jsonl.gz"]:
        with gzip.open(path, "rt") as f:
            models = {m for line in f for m in re.findall(r'"model": "([^"]+)"', line)}
        found |= {m: names.canonical(RENAMES.get(m, m)) for m in models}
    assert len(found) == 53 + 31 - 3  # gpt-4o-2024-05-13, Phi-3-mini, Mixtral: spelled alike
    assert all(found.values()), [m for m, c in found.items() if c is None]
    assert found["Meta-Llama-3_1-70B-Instruct"] == found["Meta-Llama-3.1-70B-Instruct"]
    assert found["Mixtral-8x7B-Instruct-v0.1"] == MIXTRAL  # RouteLLM's shipped profile
    assert found["Mistral-7B-v0.1"] == "mistralai/Mistral-7B-v0.1"  # RouterDC's
    assert len(set(found.values())) == len(found) - 2  # Meta-Llama-3_1-8B/70B-Instruct


def test_mmlu_pro_rows(small_data: Path) -> None:
    rows = list(IMPORTERS["mmlu-pro"](small_data))
    assert len(rows) == 3 * 31 + 3  # question 94 was revised: newest-revision files only
    assert {r["expert"] for r in rows if r["query_id"] == "mmlupro-94"} == {
        "ai21labs/AI21-Jamba-1.5-Large", "gemini-1.5-pro-002", "gemini-1.5-flash-002"}
    by = {(r["query_id"], r["expert"]): r for r in rows}
    r = by[("mmlupro-70", "meta-llama/Llama-2-70b-hf")]
    assert (r["response"], r["correct"], r["grader"]) == ("F", 0.0, "mmlu-pro/label")
    assert r["query"].startswith("The following are multiple choice questions (with answers) "
                                 "about business.") and "\nI. Unsafe practices" in r["query"]
    assert r["output_tokens"] is None and r["input_tokens"] > 0 and r["reference"] is None
    assert by[("mmlupro-71", "gpt-4o-2024-05-13")]["correct"] == 1.0


def test_cli_imports_regrades_and_summarises_the_new_tables(small_data: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    assert run(argparse.Namespace(table_cmd="import", sources=["zeroeval", "mmlu-pro"], out=a,
                                  no_bertsim=True, data_dir=small_data)) == 0
    assert run(argparse.Namespace(table_cmd="regrade", table=a, out=b, data_dir=small_data)) == 0
    assert run(argparse.Namespace(table_cmd="summary", table=b)) == 0
    text = capsys.readouterr().out
    assert ("| mmlu-pro | mmlu-pro | gpt-4o-2024-05-13 | 3 | 0.667 | edgeroute-mmlu-pro/1 |"
            in text)
    assert "| zeroeval | cruxeval | o1-mini-2024-09-12 | 2 |" in text
    assert "edgeroute-math/1" in text and "edgeroute-gsm8k/2" in text
    assert " (2) |" in text and " - (0) |" in text  # output tokens: ZeroEval has, MMLU-Pro not
