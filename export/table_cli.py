"""``edgeroute table``: import public routing tables, join cloud outcomes, pool, re-grade,
summarise and select expert tables.

The command line only: each sub-command parses its arguments here and calls the stage that
owns the work: ``export.importers`` (``import``, ``join``), ``export.pool`` (``pool``),
``export.regrade`` (``regrade``), ``export.confidence`` (``confidence``). Those modules
never import this one, so the stages import each other one way only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from export.datasets import shared_data_dir
from export.errors import PipelineError, TableError
from export.importers import IMPORTERS, PRICES, add_bertsim, join_cloud
from export.table_sources import SOURCES, cut_response


def _no_decision(rows: list[dict[str, Any]]) -> str:
    """PubMedQA replies graded by our grader that state no decision (graded wrong)."""
    from export.metrics import GRADERS, pubmedqa_decision

    mine = [r for r in rows if r["dataset"] == "pubmedqa" and r.get("response") is not None
            and r.get("grader") == GRADERS["pubmedqa"]]
    return str(sum(pubmedqa_decision(r["response"]) is None for r in mine)) if mine else "-"


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    """Per (source, dataset, expert): rows, mean correctness, grader(s), PubMedQA replies
    with no decision, mean BERTSim / NLL / latency / cost / output tokens (and how many rows
    give output tokens). Rows without a source (older tables) show ``-``."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        key = (str(r.get("source") or "-"), r["dataset"], r["expert"])
        groups.setdefault(key, []).append(r)

    def mean(items: list[dict[str, Any]], col: str, fmt: str) -> str:
        vals = [r[col] for r in items if r.get(col) is not None]
        return format(sum(vals) / len(vals), fmt) if vals else "-"

    lines = ["| source | dataset | expert | rows | correct | grader | no decision | BERTSim | NLL "
             "| latency s | cost USD/query | output tokens (rows with) |",
             "| --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (source, dataset, expert), items in sorted(groups.items()):
        graders = ", ".join(sorted({str(r.get("grader") or "-") for r in items}))
        with_tokens = sum(r.get("output_tokens") is not None for r in items)
        lines.append(
            f"| {source} | {dataset} | {expert} | {len(items)} | {mean(items, 'correct', '.3f')} "
            f"| {graders} | {_no_decision(items)} | {mean(items, 'bertsim', '.3f')} | "
            f"{mean(items, 'nll', '.1f')} | "
            f"{mean(items, 'latency_s', '.2f')} | {mean(items, 'cost_usd', '.6f')} | "
            f"{mean(items, 'output_tokens', '.0f')} ({with_tokens}) |"
        )
    return "\n".join(lines)


def select_experts(rows: list[dict[str, Any]], experts: str, complete: bool
                   ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of the named experts; with ``complete``, only queries all of them answered."""
    names = [e.strip() for e in experts.split(",") if e.strip()]
    present = {r["expert"] for r in rows}
    missing = [e for e in names if e not in present]
    if missing:
        raise TableError(f"experts {missing} are not in the table; it has {sorted(present)}")
    kept = [r for r in rows if r["expert"] in names]
    if complete:
        by_query: dict[str, set[str]] = {}
        for r in kept:
            by_query.setdefault(r["query_id"], set()).add(r["expert"])
        kept = [r for r in kept if by_query[r["query_id"]] >= set(names)]
    if not kept:
        raise TableError(f"no query was answered by every one of {names}")
    return kept, {"tool": "edgeroute table select", "experts": names, "complete": complete}


# -- CLI ------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="table_cmd", required=True)
    imp = sub.add_parser("import", help="convert public routing tables to the table format")
    imp.add_argument("sources", nargs="+", choices=[*SOURCES, "all"], help="tables to import")
    imp.add_argument("--out", type=Path, required=True, help="table file (.jsonl[.gz]/.parquet)")
    imp.add_argument("--no-bertsim", action="store_true", help="skip BERTSim (faster)")
    join = sub.add_parser("join", help="add public cloud outcomes to a collected table")
    join.add_argument("collected", type=Path, help="table written by 'edgeroute collect'")
    join.add_argument("--out", type=Path, required=True, help="joined table (.jsonl.gz)")
    join.add_argument("--no-bertsim", action="store_true", help="skip BERTSim (faster)")
    pool = sub.add_parser("pool", help="merge tables: one query id per question, one row per "
                                       "(query, expert); see export/pool.py")
    pool.add_argument("tables", type=Path, nargs="+",
                      help="tables to merge; earlier ones win duplicate (query, expert) rows")
    pool.add_argument("--out", type=Path, required=True, help="pooled table (.jsonl[.gz])")
    reg = sub.add_parser("regrade", help="grade every row with our grader for its dataset "
                                         "(see export/regrade.py); prints the counts")
    reg.add_argument("table", type=Path, help="a table file")
    reg.add_argument("--out", type=Path, required=True, help="re-graded table")
    summ = sub.add_parser("summary", help="per (source, dataset, expert): rows, mean correct, "
                                          "grader and means, as a Markdown table")
    summ.add_argument("table", type=Path, help="a table file")
    sel = sub.add_parser("select", help="keep some experts' rows (e.g. a device's experts)")
    sel.add_argument("table", type=Path, help="a table file")
    sel.add_argument("--experts", required=True, help="comma-separated expert names to keep")
    sel.add_argument("--complete", action="store_true",
                     help="keep only queries that every listed expert answered")
    sel.add_argument("--out", type=Path, required=True, help="selected table")
    from export import confidence

    confidence.add_arguments(sub)
    for p in (imp, join, reg):
        p.add_argument("--data-dir", type=Path, default=None,
                       help="shared data dir (default: $EDGEROUTE_SHARED_DATA or ../shared/data)")


def _bertsim(args: argparse.Namespace) -> Any:
    if args.no_bertsim:
        return None
    from export.metrics import BertSim

    return BertSim()


def run(args: argparse.Namespace) -> int:
    from export.table import read_header, read_table, write_table

    if args.table_cmd == "summary":
        print(summary_markdown(read_table(args.table)))
        return 0
    if args.table_cmd == "pool":
        from export.pool import pool_rows, stats_lines
        from export.table import iter_rows

        rows, stats = pool_rows([iter_rows(p) for p in args.tables])
        n = write_table(args.out, rows, {"tool": "edgeroute table pool",
                                         "tables": [str(p) for p in args.tables]})
        print(summary_markdown(rows) + "\n\n" + stats_lines(stats))
        print(f"wrote {n} rows to {args.out}", file=sys.stderr)
        return 0
    if args.table_cmd == "confidence":
        from export import confidence

        return confidence.run(args)
    if args.table_cmd == "select":
        rows, header = select_experts(read_table(args.table), args.experts, args.complete)
        n = write_table(args.out, rows, header | {"source": str(args.table)})
        print(f"wrote {n} rows to {args.out}", file=sys.stderr)
        return 0
    data_dir = args.data_dir or shared_data_dir()
    if args.table_cmd == "regrade":
        from export.regrade import regrade_rows

        rows, counts = regrade_rows(read_table(args.table), data_dir)
        before = read_header(args.table) or {}
        if before.get("tool") == "edgeroute table regrade":  # a rerun: same header
            before = before.get("before") or {}
        n = write_table(args.out, rows, {"tool": "edgeroute table regrade", "before": before})
        print(counts.markdown())
        print(f"wrote {n} rows to {args.out}", file=sys.stderr)
        return 0
    if args.table_cmd == "import":
        names = list(SOURCES) if "all" in args.sources else list(dict.fromkeys(args.sources))
        rows = [r for name in names for r in IMPORTERS[name](data_dir)]
        add_bertsim(rows, _bertsim(args))
        header = {"tool": "edgeroute table import", "sources": names}
    elif args.table_cmd == "join":
        collected = read_table(args.collected)
        cloud = join_cloud(collected, data_dir, _bertsim(args))
        rows = [r | {"response": cut_response(r.get("response"))} for r in collected] + cloud
        header = {"tool": "edgeroute table join", "collected": str(args.collected),
                  "prices_usd_per_mtok": PRICES}
    else:  # argparse enforces the choices
        raise PipelineError(f"unknown table command {args.table_cmd!r}")
    n = write_table(args.out, rows, header)
    print(f"wrote {n} rows to {args.out}", file=sys.stderr)
    return 0
