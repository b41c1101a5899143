"""``edgeroute table``: bring public routing tables into the expert-table format, and join
real cloud outcomes onto a collected table.

``table import`` converts the staged public tables in ``../shared/data/routing-*``
(RouterBench slice, RouteLLM GSM8K/MMLU, RouterDC 7B, RouterArena; ``all`` for every one)
as they are, one row per (query, model), each row naming its ``source`` table and the
source's ``grader``. ``table pool`` merges tables into one corpus (``export/pool.py``).
``table join`` adds the cloud models of the RouterBench slice and RouteLLM (GPT-4-1106 and
Mixtral-8x7B) to a table that ``collect`` made from the same queries, matched by
normalised question text (ARC, MBPP) or by row order (GSM8K, which RouteLLM keeps in the
test file's order); see each folder's SOURCE.md.

Costs and tokens. RouterBench gives USD per query, RouterArena gives tokens and USD; the
others give neither. Where tokens are missing they are estimated as ceil(chars / 4),
OpenAI's rule of thumb, which matches GPT-4's tokenizer on RouterBench's ARC prompts
(4.0 chars per token, derived from its cost column at $10/1M input). Prices per 1M tokens
(input, output), used where a source gives no cost:

- gpt-4-1106-preview: $10 / $30, OpenAI's list price for GPT-4 Turbo (also the price in
  RouterArena's model_cost.json for gpt-4-turbo).
- Mixtral-8x7B-Instruct: $0.60 / $0.60, the price RouterBench charged: its
  ``mistralai/mixtral-8x7b-chat|total_cost`` divided by the GPT-4-implied token count is
  0.6006-0.6013 $/1M on all 445 one-letter ARC test rows.

In ``join`` the cloud rows' cost is that of the joined query itself: estimated tokens of
our prompt and of the source's response at these prices (RouterBench's own cost covers
its few-shot ARC prompt, about 500 tokens, which our queries do not have).
"""

from __future__ import annotations

import argparse
import ast
import csv
import gzip
import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from export.datasets import Query, load_dataset, normalise_text, shared_data_dir
from export.errors import DatasetError, PipelineError, TableError

GPT4 = "gpt-4-1106-preview"
MIXTRAL = "mixtral-8x7b-instruct"
PRICES: dict[str, tuple[float, float]] = {GPT4: (10.0, 30.0), MIXTRAL: (0.60, 0.60)}
ROUTERBENCH_MODELS = {"gpt-4-1106-preview": GPT4, "mistralai/mixtral-8x7b-chat": MIXTRAL}
ROUTELLM_MODELS = {"gpt-4-1106-preview": GPT4, "mistralai/Mixtral-8x7B-Instruct-v0.1": MIXTRAL}
RB_DATASETS = {"arc-challenge": "arc", "mbpp": "mbpp", "winogrande": "winogrande"}
SOURCES = ("routerbench", "routellm-gsm8k", "routellm-mmlu", "routerdc", "routerarena")
# The grader behind each public table's own ``correct`` (see each folder's SOURCE.md).
SOURCE_GRADERS = {
    "routerbench": "routerbench/label",
    "routellm-gsm8k": "routellm-gsm8k/label",
    "routellm-mmlu": "routellm-mmlu/label",
    "routerdc": "routerdc/soft-score",
    "routerarena": "routerarena/score",
}
RESPONSE_CHARS = 4000  # longer responses are cut in the table (BERTSim sees 256 tokens)


def estimate_tokens(text: str | None) -> int | None:
    return None if text is None else max(1, math.ceil(len(text) / 4))


def cost_at(expert: str, input_tokens: int | None, output_tokens: int | None) -> float | None:
    if expert not in PRICES or input_tokens is None or output_tokens is None:
        return None
    pin, pout = PRICES[expert]
    return (input_tokens * pin + output_tokens * pout) / 1e6


def _float(value: str | None) -> float | None:
    try:
        f = float(value) if value not in (None, "") else None
    except ValueError:
        return {"true": 1.0, "false": 0.0}.get(str(value).strip().lower())
    return None if f is None or math.isnan(f) else f


def _cut(text: str | None) -> str | None:
    return None if text is None else text[:RESPONSE_CHARS]


def iter_csv(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a gzipped CSV; unreadable files name the file and line."""
    csv.field_size_limit(1 << 30)
    if not path.is_file():
        raise DatasetError(f"routing table {path} does not exist")
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                yield reader.line_num, row
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read CSV ({exc})") from exc


def _literal(text: str, where: str) -> str:
    """RouterBench stores prompts and responses as Python list literals: take item 0."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise DatasetError(f"{where}: not a Python list literal: {text[:60]!r}") from exc
    if isinstance(value, list):
        value = value[0] if value else ""
    return str(value)


def _need_columns(row: dict[str, str], cols: list[str], where: str) -> None:
    missing = [c for c in cols if c not in row]
    if missing:
        raise DatasetError(f"{where}: missing column(s) {missing}")


# -- RouterBench slice ----------------------------------------------------------------
def routerbench_rows(data_dir: Path) -> Iterator[tuple[dict[str, str], str, int, str]]:
    """(row, split, line, file) over the six RouterBench CSVs."""
    folder = data_dir / "routing-routerbench-subset"
    for task in ("arc_challenge", "mbpp", "winograde"):
        for split in ("train", "test"):
            path = folder / f"{task}_{split}.csv.gz"
            for line, row in iter_csv(path):
                _need_columns(row, ["sample_id", "prompt", "eval_name"], f"{path}:{line}")
                yield row, split, line, f"{path}:{line}"


def rb_models(row: dict[str, str]) -> list[str]:
    return [k[: -len("|model_response")] for k in row if k.endswith("|model_response")]


def import_routerbench(data_dir: Path) -> Iterator[dict[str, Any]]:
    for row, split, _line, where in routerbench_rows(data_dir):
        prompt = _literal(row["prompt"], where)
        qid = f"routerbench-{row.get('') or row['sample_id']}"
        for model in rb_models(row):
            response = _literal(row[f"{model}|model_response"], where)
            yield {
                "query_id": qid, "dataset": RB_DATASETS.get(row["eval_name"], row["eval_name"]),
                "split": split, "query": prompt, "reference": None, "expert": model,
                "response": _cut(response), "correct": _float(row.get(model)),
                "input_tokens": estimate_tokens(prompt),
                "output_tokens": estimate_tokens(response),
                "cost_usd": _float(row.get(f"{model}|total_cost")),
                "source": "routerbench", "grader": SOURCE_GRADERS["routerbench"],
            }


# -- RouteLLM -------------------------------------------------------------------------
def import_routellm_gsm8k(data_dir: Path) -> Iterator[dict[str, Any]]:
    """RouteLLM's GSM8K rows are the GSM8K test file in order: ids ``gsm8k-test-<line>``."""
    path = data_dir / "routing-routellm" / "gsm8k_responses.csv.gz"
    refs = {q.query_id: q for q in load_dataset("gsm8k", data_dir)}
    for i, (line, row) in enumerate(iter_csv(path), 1):
        _need_columns(row, ["prompt", *ROUTELLM_MODELS], f"{path}:{line}")
        ref = refs.get(f"gsm8k-test-{i}")
        if ref is None or normalise_text(ref.source_text) != normalise_text(row["prompt"]):
            raise DatasetError(f"{path}:{line}: row {i} does not match gsm8k test line {i}")
        for model, expert in ROUTELLM_MODELS.items():
            response = row.get(f"{model}_response")
            tin, tout = estimate_tokens(row["prompt"]), estimate_tokens(response)
            yield {
                "query_id": ref.query_id, "dataset": "gsm8k", "split": None,
                "query": row["prompt"], "reference": ref.reference, "expert": expert,
                "response": _cut(response), "correct": _float(row[model]),
                "input_tokens": tin, "output_tokens": tout, "cost_usd": cost_at(expert, tin, tout),
                "source": "routellm-gsm8k", "grader": SOURCE_GRADERS["routellm-gsm8k"],
            }


def import_routellm_mmlu(data_dir: Path) -> Iterator[dict[str, Any]]:
    path = data_dir / "routing-routellm" / "mmlu_responses.csv.gz"
    for line, row in iter_csv(path):
        _need_columns(row, ["subject", "index_in_subject", "prompt", *ROUTELLM_MODELS],
                      f"{path}:{line}")
        for model, expert in ROUTELLM_MODELS.items():
            yield {
                "query_id": f"mmlu-{row['subject']}-{row['index_in_subject']}",
                "dataset": "mmlu", "split": None, "query": row["prompt"], "reference": None,
                "expert": expert, "response": None, "correct": _float(row[model]),
                "input_tokens": estimate_tokens(row["prompt"]),
                "source": "routellm-mmlu", "grader": SOURCE_GRADERS["routellm-mmlu"],
            }


# -- RouterDC -------------------------------------------------------------------------
def import_routerdc(data_dir: Path) -> Iterator[dict[str, Any]]:
    """RouterDC's soft scores become ``correct`` (a soft score in [0, 1])."""
    folder = data_dir / "routing-routerdc-7b"
    files = sorted(folder.glob("*.json.gz"))
    if not files:
        raise DatasetError(f"{folder}: no RouterDC *.json.gz files")
    for path in files:
        stem = path.name[: -len(".json.gz")]
        split = "train" if "train" in stem else "test" if "test" in stem else None
        dataset = stem.replace("-train", "").replace("-test", "").replace("_train", "")
        dataset = dataset.replace("_test", "")
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                items = json.load(f)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("scores"), dict):
                raise DatasetError(f"{path}: item {i} lacks a 'scores' object")
            for expert, score in item["scores"].items():
                yield {
                    "query_id": f"routerdc-{stem}-{i}", "dataset": dataset, "split": split,
                    "query": str(item.get("question", "")), "reference": None,
                    "expert": expert, "correct": score, "source": "routerdc",
                    "grader": SOURCE_GRADERS["routerdc"],
                }


# -- RouterArena ----------------------------------------------------------------------
def import_routerarena(data_dir: Path) -> Iterator[dict[str, Any]]:
    folder = data_dir / "routing-routerarena"
    files = sorted(folder.glob("*.jsonl.gz"))
    if not files:
        raise DatasetError(f"{folder}: no RouterArena *.jsonl.gz files")
    from export.datasets import iter_jsonl

    for path in files:
        expert = path.name[: -len(".jsonl.gz")]
        for line, obj in iter_jsonl(path):
            ev = obj.get("evaluation_result") or {}
            usage = obj.get("token_usage") or {}
            gidx = obj.get("global_index")
            if not isinstance(gidx, str) or not isinstance(ev, dict):
                raise DatasetError(f"{path}:{line}: needs 'global_index' and 'evaluation_result'")
            truth = ev.get("ground_truth")
            yield {
                "query_id": f"routerarena-{gidx}", "dataset": gidx.split("_")[0].lower(),
                "split": None, "query": str(obj.get("question", "")),
                "reference": None if truth in (None, "") else str(truth), "expert": expert,
                "response": _cut(obj.get("generated_answer")), "correct": ev.get("score"),
                "input_tokens": usage.get("input_tokens"),
                "output_tokens": usage.get("output_tokens"), "cost_usd": ev.get("inference_cost"),
                "source": "routerarena",
                "grader": f"{SOURCE_GRADERS['routerarena']}-{ev.get('metric') or 'score'}",
            }


IMPORTERS: dict[str, Callable[[Path], Iterator[dict[str, Any]]]] = {
    "routerbench": import_routerbench,
    "routellm-gsm8k": import_routellm_gsm8k,
    "routellm-mmlu": import_routellm_mmlu,
    "routerdc": import_routerdc,
    "routerarena": import_routerarena,
}


# -- joining cloud outcomes onto collected queries -------------------------------------
def _arc_stem(prompt: str) -> str:
    """The asked question of a RouterBench ARC prompt (few-shot blocks come first)."""
    return prompt.split("\n\n")[-1].split("\nA)")[0]


def routerbench_by_text(data_dir: Path) -> dict[tuple[str, str], dict[str, str]]:
    """RouterBench ARC/MBPP rows keyed by (dataset, normalised question); first row wins."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for row, _split, _line, where in routerbench_rows(data_dir):
        dataset = RB_DATASETS.get(row["eval_name"])
        if dataset not in ("arc", "mbpp"):
            continue
        prompt = _literal(row["prompt"], where)
        key = normalise_text(_arc_stem(prompt) if dataset == "arc" else prompt)
        out.setdefault((dataset, key), row)
    return out


def joinable_filters(data_dir: Path | None = None) -> dict[str, Callable[[Query], bool]]:
    """Per dataset, a test for queries that have public cloud outcomes to join."""
    index = routerbench_by_text(data_dir or shared_data_dir())

    def covered(q: Query) -> bool:
        if q.dataset == "arc" and q.extra.get("subset") != "challenge":
            return False
        return (q.dataset, normalise_text(q.source_text)) in index

    def in_routellm(q: Query) -> bool:
        return q.query_id.startswith("gsm8k-test-")

    return {"arc": covered, "mbpp": covered, "gsm8k": in_routellm}


def cloud_rows_for(
    queries: list[Query], data_dir: Path
) -> Iterator[tuple[Query, str, str | None, float | None]]:
    """(query, expert, response, correct) for each cloud outcome of a collected query."""
    rb = routerbench_by_text(data_dir)
    gsm = {r["query_id"] + "|" + r["expert"]: r for r in import_routellm_gsm8k(data_dir)}
    for q in queries:
        if q.dataset == "gsm8k":
            for expert in ROUTELLM_MODELS.values():
                r = gsm.get(f"{q.query_id}|{expert}")
                if r is not None:
                    yield q, expert, r["response"], r["correct"]
            continue
        row = rb.get((q.dataset, normalise_text(q.source_text)))
        if row is None:
            continue
        for model, expert in ROUTERBENCH_MODELS.items():
            response = _literal(row[f"{model}|model_response"], f"routerbench {row['sample_id']}")
            yield q, expert, response, _float(row.get(model))


def join_cloud(
    collected: list[dict[str, Any]], data_dir: Path, bertsim: Any
) -> list[dict[str, Any]]:
    """Rows for the cloud models on the collected table's queries, in our query format."""
    wanted = {r["query_id"] for r in collected}
    by_id: dict[str, Query] = {}
    for name in sorted({r["dataset"] for r in collected}):
        if name in ("arc", "gsm8k", "mbpp", "pubmedqa"):
            by_id |= {q.query_id: q for q in load_dataset(name, data_dir) if q.query_id in wanted}
    rows = []
    for q, expert, response, correct in cloud_rows_for(list(by_id.values()), data_dir):
        source = "routellm-gsm8k" if q.dataset == "gsm8k" else "routerbench"
        tin, tout = estimate_tokens(q.prompt), estimate_tokens(response)
        rows.append({
            "query_id": q.query_id, "dataset": q.dataset, "split": q.split, "query": q.prompt,
            "reference": q.reference, "expert": expert, "response": _cut(response),
            "bertsim": None, "nll": None, "correct": correct, "latency_s": None,
            "input_tokens": tin, "output_tokens": tout, "cost_usd": cost_at(expert, tin, tout),
            "source": source, "grader": SOURCE_GRADERS[source],
        })
    add_bertsim(rows, bertsim)
    return rows


def add_bertsim(rows: list[dict[str, Any]], bertsim: Any) -> None:
    """Fill ``bertsim`` where a row has a response and a reference and none yet."""
    if bertsim is None:
        return
    todo = [
        r for r in rows if r.get("bertsim") is None and r.get("response") and r.get("reference")
    ]
    sims = bertsim.similarities([r["response"] for r in todo], [r["reference"] for r in todo])
    for r, s in zip(todo, sims, strict=True):
        r["bertsim"] = s


def _no_decision(rows: list[dict[str, Any]]) -> str:
    """PubMedQA replies graded by our grader that state no decision (graded wrong)."""
    from export.metrics import GRADERS, pubmedqa_decision

    mine = [r for r in rows if r["dataset"] == "pubmedqa" and r.get("response") is not None
            and r.get("grader") == GRADERS["pubmedqa"]]
    return str(sum(pubmedqa_decision(r["response"]) is None for r in mine)) if mine else "-"


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    """Per (source, dataset, expert): rows, mean correctness, grader(s), PubMedQA replies
    with no decision, mean BERTSim / NLL / latency / cost. Rows without a source (older
    tables) show ``-``."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        key = (str(r.get("source") or "-"), r["dataset"], r["expert"])
        groups.setdefault(key, []).append(r)

    def mean(items: list[dict[str, Any]], col: str, fmt: str) -> str:
        vals = [r[col] for r in items if r.get(col) is not None]
        return format(sum(vals) / len(vals), fmt) if vals else "-"

    lines = ["| source | dataset | expert | rows | correct | grader | no decision | BERTSim | NLL "
             "| latency s | cost USD/query |",
             "| --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for (source, dataset, expert), items in sorted(groups.items()):
        graders = ", ".join(sorted({str(r.get("grader") or "-") for r in items}))
        lines.append(
            f"| {source} | {dataset} | {expert} | {len(items)} | {mean(items, 'correct', '.3f')} "
            f"| {graders} | {_no_decision(items)} | {mean(items, 'bertsim', '.3f')} | "
            f"{mean(items, 'nll', '.1f')} | "
            f"{mean(items, 'latency_s', '.2f')} | {mean(items, 'cost_usd', '.6f')} |"
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
        rows = [r | {"response": _cut(r.get("response"))} for r in collected] + cloud
        header = {"tool": "edgeroute table join", "collected": str(args.collected),
                  "prices_usd_per_mtok": PRICES}
    else:  # argparse enforces the choices
        raise PipelineError(f"unknown table command {args.table_cmd!r}")
    n = write_table(args.out, rows, header)
    print(f"wrote {n} rows to {args.out}", file=sys.stderr)
    return 0
