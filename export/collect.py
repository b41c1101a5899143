"""``edgeroute collect``: prompt every configured expert with every query and write the
expert table, one row per (query, expert).

Resumable by construction: each finished row is appended to a plain JSONL file and
flushed + fsynced before the next, and a rerun skips the (query_id, expert) pairs already
there. A crash or Ctrl-C loses only the calls in flight; a torn last line (a kill in the
middle of a write) is cut off on the next start. Each expert gets its own worker thread,
so a slow cloud call does not hold up the local models; the main thread alone writes.
An expert that fails is recorded in ``<out>.errors.jsonl`` (and not in the table, so a
rerun retries it); after a few failures in a row its remaining queries are skipped and
the other experts continue.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.datasets import DATASETS, Query, load_dataset, load_user_jsonl, sample
from export.errors import PipelineError
from export.table import COLUMNS, FORMAT_VERSION, normalise_row

# GSM8K at 256 new tokens cut 85 of the committed table's 150 Qwen answers before their
# final line (issue #15); 512 leaves room for the step-by-step solution the prompt asks for.
DEFAULT_MAX_TOKENS = {"arc": 32, "gsm8k": 512, "mbpp": 256, "pubmedqa": 96}
FALLBACK_MAX_TOKENS = 256
MAX_CONSECUTIVE_FAILURES = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True,
                        help="Table JSONL to append to (plain .jsonl; resumed if it exists).")
    parser.add_argument("--datasets", default=",".join(DATASETS),
                        help=f"Comma-separated builtin datasets ({','.join(DATASETS)}) or ''.")
    parser.add_argument("--user-jsonl", type=Path, action="append", default=[],
                        help="Your own queries: JSONL with 'prompt', 'reference', opt. 'dataset'.")
    parser.add_argument("--per-dataset", type=int, default=150,
                        help="Queries sampled per dataset (0: all).")
    parser.add_argument("--seed", type=int, default=0, help="Sampling seed.")
    parser.add_argument("--joinable", action="store_true",
                        help="Sample ARC/MBPP only from queries that the public routing tables "
                             "(RouterBench slice) cover, so cloud outcomes can be joined.")
    parser.add_argument("--experts", default="",
                        help="Comma-separated expert names to run (default: all configured).")
    parser.add_argument("--max-tokens", default="",
                        help="Per-dataset overrides, e.g. 'gsm8k=256,arc=32' or one number.")
    parser.add_argument("--n-threads", type=int, default=None,
                        help="CPU threads per local model (overrides the settings).")
    parser.add_argument("--no-nll", action="store_true", help="Skip the NLL of references.")
    parser.add_argument("--limit", type=int, default=None,
                        help="Stop after this many new rows (for smoke runs).")


def parse_max_tokens(spec: str) -> dict[str, int]:
    out = dict(DEFAULT_MAX_TOKENS)
    if not spec.strip():
        return out
    if spec.strip().isdigit():
        return {k: int(spec) for k in out} | {"*": int(spec)}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit():
            raise PipelineError(f"--max-tokens: bad item {part!r}; use e.g. 'gsm8k=256,arc=32'")
        out[name.strip()] = int(value)
    return out


# -- queries --------------------------------------------------------------------------
def build_queries(args: argparse.Namespace) -> list[Query]:
    names = [d.strip() for d in str(args.datasets).split(",") if d.strip()]
    keep: dict[str, Callable[[Query], bool]] = {}
    if args.joinable:
        from export.importers import joinable_filters

        keep = joinable_filters()
    n = args.per_dataset or None
    groups = [sample(load_dataset(name), n, args.seed, keep.get(name)) for name in names]
    groups += [load_user_jsonl(path) for path in args.user_jsonl]
    # Round-robin over the inputs, so that a partial run covers every dataset evenly.
    longest = max((len(g) for g in groups), default=0)
    queries = [g[i] for i in range(longest) for g in groups if i < len(g)]
    if not queries:
        raise PipelineError("no queries: give --datasets and/or --user-jsonl")
    ids = [q.query_id for q in queries]
    if len(set(ids)) != len(ids):
        raise PipelineError("query ids repeat across inputs; give user queries unique 'id's")
    return queries


# -- the resumable sink ---------------------------------------------------------------
class TableSink:
    """Append-only JSONL writer with fsync per row; knows which pairs are done."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = Path(path)
        if self.path.suffix == ".gz":
            raise PipelineError(f"--out {path}: collect appends to plain .jsonl; gzip it after")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = self._take_lock()
        self.done: set[tuple[str, str]] = set()
        self._repair_and_scan()
        self._f = self.path.open("a", encoding="utf-8")
        if self.path.stat().st_size == 0:
            self._write({"_edgeroute_table": FORMAT_VERSION, **header})

    def _take_lock(self) -> Any:
        """One writer per table: a second collect on the same file would interleave rows."""
        import fcntl

        lock = self.path.with_name(self.path.name + ".lock").open("w")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            lock.close()
            raise PipelineError(f"another 'edgeroute collect' is writing {self.path}; "
                                "wait for it or stop it first") from exc
        return lock

    def _repair_and_scan(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # a torn last row from a killed run
            cut = data.rfind(b"\n") + 1
            with self.path.open("r+b") as f:
                f.truncate(cut)
            data = data[:cut]
        for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PipelineError(f"{self.path}:{lineno}: not valid JSON ({exc.msg}); "
                                    "fix or remove the line to resume") from exc
            if "_edgeroute_table" not in obj:
                self.done.add((str(obj.get("query_id")), str(obj.get("expert"))))

    def _write(self, obj: dict[str, Any]) -> None:
        self._f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def add(self, row: dict[str, Any]) -> None:
        self._write(normalise_row(row))
        self.done.add((row["query_id"], row["expert"]))

    def close(self) -> None:
        self._f.close()
        self._lock.close()


# -- experts --------------------------------------------------------------------------
@dataclass
class Runner:
    """One expert plus what collect needs around it (NLL scorer, its event loop)."""

    name: str
    expert: Any
    nll: Any = None
    loop: asyncio.AbstractEventLoop | None = None
    failures: list[str] = field(default_factory=list)

    def complete(self, messages: list[dict[str, str]], params: Any) -> Any:
        sync = getattr(self.expert, "complete_sync", None)
        if sync is not None:
            return sync(messages, params)
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        return self.loop.run_until_complete(self.expert.complete(messages, params))

    def close(self) -> None:
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.expert.aclose())
        self.loop.close()
        if self.nll is not None:
            self.nll.close()


def build_runners(args: argparse.Namespace) -> list[Runner]:
    """Load the configured experts (local GGUFs, cloud endpoints); ``--experts`` filters."""
    from agent.experts.local import LocalExpert
    from agent.model_files import resolve_model
    from agent.settings import load_settings

    settings = load_settings()
    wanted = {e.strip() for e in str(args.experts).split(",") if e.strip()}
    unknown = wanted - set(settings.expert_names())
    if unknown:
        raise PipelineError(f"--experts: {sorted(unknown)} not configured; "
                            f"configured: {settings.expert_names()}")
    runners: list[Runner] = []
    for local in settings.local_experts:
        if wanted and local.name not in wanted:
            continue
        if args.n_threads:
            local = local.model_copy(update={"n_threads": args.n_threads})
        path = resolve_model(local.model, local.sha256, settings.paths.cache_dir)
        runner = Runner(local.name, LocalExpert.load(local, path))
        if not args.no_nll:
            from export.metrics import NllScorer

            runner.nll = NllScorer(path, n_threads=local.n_threads)
        runners.append(runner)
    for cloud in settings.cloud_experts:
        if wanted and cloud.name not in wanted:
            continue
        from agent.experts.cloud import CloudExpert  # written alongside; imported lazily

        runners.append(Runner(cloud.name, CloudExpert.from_settings(cloud, settings)))
    if not runners:
        raise PipelineError("no experts selected; check --experts and the settings")
    return runners


# -- one call -------------------------------------------------------------------------
def answer_row(runner: Runner, query: Query, max_tokens: int) -> dict[str, Any]:
    """Prompt one expert with one query; every table column but BERTSim."""
    from cloud_bridge.wire import SamplingParams
    from export.metrics import answer_check, grade, grader_name

    messages = [{"role": "user", "content": query.prompt}]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=0)
    start = time.perf_counter()
    completion = runner.complete(messages, params)
    latency = time.perf_counter() - start
    nll = runner.nll.nll(messages, query.reference) if runner.nll is not None else None
    confidence = _confidence(runner, messages, completion)
    correct = grade(query, completion.content)
    return {
        "query_id": query.query_id, "dataset": query.dataset, "split": query.split,
        "query": query.prompt, "reference": query.reference, "expert": runner.name,
        "response": completion.content, "bertsim": None, "nll": nll,
        "correct": correct, "latency_s": round(latency, 4),
        "input_tokens": completion.usage.prompt_tokens,
        "output_tokens": completion.usage.completion_tokens,
        "cost_usd": runner.expert.info.prices.cost_usd(completion.usage),
        "source": "collected",
        "grader": grader_name(query.dataset) if correct is not None else None,
        "mean_logprob": confidence[0] if confidence else None,
        "min_logprob": confidence[1] if confidence else None,
        "check": answer_check(query.dataset, completion.content, query.test_setup),
    }


def _confidence(runner: Runner, messages: list[dict[str, str]],
                completion: Any) -> tuple[float, float] | None:
    """A local answer's (mean, min) token log-probability: as the expert reported it
    while generating, else scored under its model after the prompt (teacher forcing)."""
    if runner.expert.info.kind != "local":
        return None
    conf = getattr(completion, "confidence", None)
    if conf is not None:
        return conf.mean_logprob, conf.min_logprob
    if runner.nll is None or not completion.content:
        return None
    scored = runner.nll.answer_logprobs(messages, completion.content)
    return None if scored is None else (scored[0], scored[1])


def _worker(runner: Runner, todo: list[Query], max_tokens: dict[str, int],
            out: queue.Queue[Any], stop: threading.Event) -> None:
    consecutive = 0
    for query in todo:
        if stop.is_set():
            break
        if consecutive >= MAX_CONSECUTIVE_FAILURES:
            out.put(("skip", runner.name, query, "expert gave up after repeated failures"))
            continue
        mt = max_tokens.get(query.dataset, max_tokens.get("*", FALLBACK_MAX_TOKENS))
        try:
            out.put(("row", runner.name, query, answer_row(runner, query, mt)))
            consecutive = 0
        except Exception as exc:  # recorded per expert; the other experts go on
            consecutive += 1
            out.put(("error", runner.name, query, f"{type(exc).__name__}: {exc}"))
    out.put(("done", runner.name, None, None))


def collect(queries: list[Query], runners: list[Runner], sink: TableSink,
            max_tokens: dict[str, int], bertsim: Any, limit: int | None = None) -> dict[str, Any]:
    """Run every runner over its not-yet-done queries; returns per-expert counts."""
    from tqdm import tqdm

    todo = {r.name: [q for q in queries if (q.query_id, r.name) not in sink.done] for r in runners}
    total = sum(len(v) for v in todo.values())
    if limit is not None:
        total = min(total, limit)
    stats = {r.name: {"rows": 0, "errors": 0, "skipped": 0} for r in runners}
    out: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()
    threads = [threading.Thread(target=_worker, args=(r, todo[r.name], max_tokens, out, stop),
                                daemon=True, name=f"collect-{r.name}") for r in runners]
    for t in threads:
        t.start()
    errors_path = sink.path.with_name(sink.path.name + ".errors.jsonl")
    running, written = len(threads), 0
    with tqdm(total=total, unit="row", dynamic_ncols=True, file=sys.stderr) as bar:
        try:
            while running:
                kind, name, query, payload = out.get()
                if kind == "done":
                    running -= 1
                elif kind == "row":
                    if bertsim is not None and payload["response"]:
                        payload["bertsim"] = bertsim.similarity(payload["response"],
                                                                payload["reference"])
                    sink.add(payload)
                    stats[name]["rows"] += 1
                    written += 1
                    bar.update(1)
                    if limit is not None and written >= limit:
                        stop.set()
                else:
                    stats[name]["errors" if kind == "error" else "skipped"] += 1
                    _log_error(errors_path, name, query, kind, payload)
                    bar.set_postfix_str(f"{name}: {payload[:60]}")
        finally:
            stop.set()
    for t in threads:
        t.join(timeout=5)
    return stats


def _log_error(path: Path, expert: str, query: Query, kind: str, message: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"expert": expert, "query_id": query.query_id, "kind": kind,
                            "error": message, "time": time.time()}) + "\n")


def run(args: argparse.Namespace) -> int:
    max_tokens = parse_max_tokens(args.max_tokens)
    queries = build_queries(args)
    header = {"tool": "edgeroute collect", "argv": sys.argv[1:], "seed": args.seed,
              "columns": list(COLUMNS)}
    sink = TableSink(args.out, header)
    runners = build_runners(args)
    from export.metrics import BertSim

    started = time.perf_counter()
    try:
        stats = collect(queries, runners, sink, max_tokens, BertSim(), args.limit)
    finally:
        sink.close()
        for r in runners:
            r.close()
    wall = time.perf_counter() - started
    for name, s in stats.items():
        print(f"{name}: {s['rows']} new rows, {s['errors']} errors, {s['skipped']} skipped",
              file=sys.stderr)
    print(f"{len(sink.done)} rows in {args.out} ({wall:.0f}s this run)", file=sys.stderr)
    failed = sum(s["errors"] + s["skipped"] for s in stats.values())
    if failed:
        print(f"{failed} calls failed; see {args.out}.errors.jsonl; rerun to retry them",
              file=sys.stderr)
        return 1
    return 0
