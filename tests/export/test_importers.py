"""Importers on the real public routing tables: round-trip through the table format,
joins onto our queries, and clear errors for bad files."""

from __future__ import annotations

import argparse
import csv
import gzip
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


def test_every_table_is_registered_under_its_source_name() -> None:
    from export.table_sources import SOURCE_GRADERS, SOURCES

    assert tuple(IMPORTERS) == SOURCES and set(SOURCE_GRADERS) == set(SOURCES)


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
