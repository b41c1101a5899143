"""Public routing tables in the expert-table format, and real cloud outcomes joined onto a
collected table. The ``edgeroute table`` commands that use them are ``export.table_cli``.

:data:`IMPORTERS` converts each staged public table in ``../shared/data/routing-*``
(RouterBench slice, RouteLLM GSM8K/MMLU, RouterDC 7B, RouterArena, ZeroEval
(``export.zeroeval``), MMLU-Pro (``export.mmlu_pro``)) as it is, one row per (query,
model), each row naming its ``source`` table and the source's ``grader``. ``join`` adds the
cloud models of the RouterBench slice and RouteLLM (GPT-4-1106 and Mixtral-8x7B) to a
table that ``collect`` made from the same queries, matched by normalised question text
(ARC, MBPP) or by row order (GSM8K, which RouteLLM keeps in the test file's order); see
each folder's SOURCE.md.

Costs and tokens. RouterBench gives USD per query, RouterArena gives tokens and USD,
ZeroEval the length of each reply; the others give neither. Where tokens are missing they
are estimated as ceil(chars / 4) (``export.table_sources.estimate_tokens``). Prices per 1M
tokens (input, output), used where a source gives no cost:

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

import ast
import csv
import gzip
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cloud_bridge.usage import Prices
from export.datasets import Query, load_dataset, normalise_text, shared_data_dir
from export.errors import DatasetError
from export.mmlu_pro import import_mmlu_pro
from export.table_sources import (
    GPT4,
    MIXTRAL,
    RB_DATASETS,
    ROUTELLM_MODELS,
    ROUTERBENCH_MODELS,
    SOURCE_GRADERS,
    cut_response,
    estimate_tokens,
)
from export.zeroeval import import_zeroeval

PRICES: dict[str, tuple[float, float]] = {GPT4: (10.0, 30.0), MIXTRAL: (0.60, 0.60)}


def cost_at(expert: str, input_tokens: int | None, output_tokens: int | None) -> float | None:
    if expert not in PRICES or input_tokens is None or output_tokens is None:
        return None
    return float(Prices(*PRICES[expert]).usd(input_tokens, output_tokens))


def _float(value: str | None) -> float | None:
    try:
        f = float(value) if value not in (None, "") else None
    except ValueError:
        return {"true": 1.0, "false": 0.0}.get(str(value).strip().lower())
    return None if f is None or math.isnan(f) else f


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
                "response": cut_response(response), "correct": _float(row.get(model)),
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
                "response": cut_response(response), "correct": _float(row[model]),
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
                "response": cut_response(obj.get("generated_answer")), "correct": ev.get("score"),
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
    "zeroeval": import_zeroeval,
    "mmlu-pro": import_mmlu_pro,
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
            "reference": q.reference, "expert": expert, "response": cut_response(response),
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
