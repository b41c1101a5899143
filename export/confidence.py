"""``edgeroute table confidence``: add the cascade's confidence signal to a table's stored
local answers, without regenerating them.

For every row of a configured local expert (``source`` ``collected``), the stored response
is scored under that expert's model after its chat-formatted prompt (teacher forcing, the
NLL scorer's single pass): ``mean_logprob`` and ``min_logprob`` of its tokens, the numbers
the daemon gets while generating (``cloud_bridge.wire.AnswerConfidence``). Every row of a
dataset with a reference-free check also gets ``check`` (``export.metrics.answer_check``).

Resumable: each scored row is appended (fsync'd) to ``<out>.partial.jsonl``, keyed by
query id, expert and a hash of the response; a rerun skips those. The table is written
atomically at the end. Responses stored cut at 4,000 characters are scored as stored.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from export.errors import PipelineError

KEY_COLUMNS = ("mean_logprob", "min_logprob")


def add_arguments(sub: Any) -> None:
    conf = sub.add_parser("confidence", help="score stored local answers under their model "
                                             "(mean_logprob/min) and run the reference-free "
                                             "checks; resumable (see export/confidence.py)")
    conf.add_argument("table", type=Path, help="a table file")
    conf.add_argument("--out", type=Path, required=True, help="table with the new columns")
    conf.add_argument("--experts", default="",
                      help="comma-separated local experts to score (default: every configured "
                           "local expert the table has)")
    conf.add_argument("--n-threads", type=int, default=None, help="CPU threads for scoring")
    conf.add_argument("--rescore", action="store_true",
                      help="score rows that already have a mean_logprob too")


def row_key(row: dict[str, Any]) -> str:
    digest = hashlib.sha256((row.get("response") or "").encode("utf-8")).hexdigest()[:16]
    return f"{row['query_id']}\x1f{row['expert']}\x1f{digest}"


def _read_partial(path: Path) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a killed run: scored again
        done[obj["key"]] = obj
    return done


def add_confidence(
    rows: list[dict[str, Any]],
    scorers: dict[str, Callable[[list[dict[str, str]], str], tuple[float, float, int] | None]],
    partial: Path,
    setups: dict[str, str] | None = None,
    rescore: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Fill ``mean_logprob``/``min_logprob`` (rows of experts in ``scorers``) and ``check``
    (every row with a response) in place; returns counts per outcome."""
    from export.metrics import answer_check

    done = _read_partial(partial)
    counts = {"scored": 0, "resumed": 0, "unscorable": 0, "kept": 0}
    partial.parent.mkdir(parents=True, exist_ok=True)
    with partial.open("a", encoding="utf-8") as f:
        for row in rows:
            response = row.get("response")
            if response:
                setup = (setups or {}).get(row["query_id"], "")
                row["check"] = answer_check(row["dataset"], response, setup)
            score = scorers.get(row["expert"])
            if score is None or row.get("source") != "collected":
                continue
            if row.get("mean_logprob") is not None and not rescore:
                counts["kept"] += 1
                continue
            key = row_key(row)
            got = done.get(key)
            if got is not None:
                counts["resumed"] += 1
            else:
                scored = score([{"role": "user", "content": row["query"]}], response or "")
                got = {"key": key, "mean_logprob": scored[0] if scored else None,
                       "min_logprob": scored[1] if scored else None}
                f.write(json.dumps(got) + "\n")
                f.flush()
                os.fsync(f.fileno())
                counts["scored" if scored else "unscorable"] += 1
                if progress is not None:
                    progress(1)
            for c in KEY_COLUMNS:
                row[c] = got[c]
    return counts


def _scorers(experts: list[str], n_threads: int | None) -> Iterator[tuple[str, Any]]:
    from agent.model_files import resolve_model
    from agent.settings import load_settings
    from export.metrics import NllScorer

    settings = load_settings()
    local = {e.name: e for e in settings.local_experts}
    unknown = [e for e in experts if e not in local]
    if unknown:
        raise PipelineError(f"--experts: {unknown} are not configured local experts; "
                            f"configured: {sorted(local)}")
    for name in experts:
        cfg = local[name]
        path = resolve_model(cfg.model, cfg.sha256, settings.paths.cache_dir)
        yield name, NllScorer(path, n_ctx=2048, n_threads=n_threads or cfg.n_threads)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from agent.settings import load_settings
    from export.datasets import load_dataset
    from export.table import read_header, read_table, write_table

    rows = list(read_table(args.table))
    have = {r["expert"] for r in rows if r.get("source") == "collected"}
    configured = [e.name for e in load_settings().local_experts]
    wanted = ([e.strip() for e in args.experts.split(",") if e.strip()] if args.experts
              else [e for e in configured if e in have])
    if not wanted:
        raise PipelineError(f"{args.table} has no rows of a configured local expert "
                            f"({configured}); pass --experts")
    setups: dict[str, str] = {}
    if any(r["dataset"] == "mbpp" for r in rows):
        setups = {q.query_id: q.test_setup for q in load_dataset("mbpp")}
    partial = args.out.with_name(args.out.name + ".partial.jsonl")
    todo = sum(1 for r in rows if r["expert"] in wanted and r.get("source") == "collected"
               and (args.rescore or r.get("mean_logprob") is None))
    totals: dict[str, int] = {}
    with tqdm(total=todo, unit="row", dynamic_ncols=True, file=sys.stderr) as bar:
        for name, scorer in _scorers(wanted, args.n_threads):
            try:
                mine = [r for r in rows if r["expert"] == name]
                counts = add_confidence(mine, {name: scorer.answer_logprobs}, partial, setups,
                                        args.rescore, bar.update)
            finally:
                scorer.close()
            for k, v in counts.items():
                totals[k] = totals.get(k, 0) + v
    others = [r for r in rows if r["expert"] not in wanted]
    add_confidence(others, {}, partial, setups)  # the checks only
    header = (read_header(args.table) or {}) | {"confidence": {
        "tool": "edgeroute table confidence", "experts": wanted}}
    n = write_table(args.out, rows, header)
    print(f"{n} rows to {args.out}: " + ", ".join(f"{v} {k}" for k, v in totals.items()),
          file=sys.stderr)
    return 0
