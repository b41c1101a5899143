"""Continuous batching of a local expert: aggregate and per-client generation tokens/s of
Qwen with 1 and 4 concurrent clients, through the daemon as it ships (its own process,
default settings: threads, ``n_parallel``, context), side by side with llama.cpp's own
``llama-server`` (bench/llama_server.py) at the same model, threads, slots and context per
slot. Same client code for both: plain ``/v1/chat/completions``, temperature 0, prompts
that run to ``max_tokens``; sides and client counts interleaved, the order flipped every
round, so machine noise hits every side alike. Prints medians and same-run ratios.

    .venv/bin/python -m bench.local_batching [--rounds 3] [--clients 1 4] [--max-tokens 64]
        [--server same|native|none] [--n-parallel N] [--case long|distinct]

A client sends its requests back to back; aggregate = all completion tokens / wall time
of the round; per-client = one client's completion tokens / its own time.

``--case distinct`` is the pattern a user produces instead: four short, different requests
(a merge function, a hash map, a haiku, paperclips; 96 tokens at most, most answers end
earlier, each at its own length), the same four every round, sent by one client one after
another or by four clients at once: the same work either way, so aggregate 4 / 1 says
whether four users at once are served faster than one after another.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

# Asked for more than max_tokens of text, so every answer runs to max_tokens.
PROMPTS = [
    "Write a long, detailed tutorial on Python list comprehensions with many examples.",
    "Explain in detail how a hash map works, with code in three languages.",
    "Write a detailed essay about the history of computing, at least 500 words.",
    "Describe step by step how to build a web server in Go, with full code.",
    "Write a long story about a robot learning to paint.",
    "Explain sorting algorithms one by one, with Python code for each.",
    "Write a detailed guide to unit testing in JavaScript with examples.",
    "Describe the TCP handshake and congestion control in detail.",
]


# --case distinct: short requests a user sends, answered at their own lengths.
DISTINCT = [
    "Write a Python function that merges two sorted lists.",
    "Explain how a hash map works.",
    "Write a haiku about autumn.",
    "Give five uses of a paperclip.",
]


@dataclass
class Round:
    aggregate: float  # tokens/s of all clients together
    per_client: list[float]


async def _client(http: httpx.AsyncClient, url: str, model: str, prompts: list[str],
                  max_tokens: int) -> tuple[int, float]:
    t0, tokens = time.perf_counter(), 0
    for prompt in prompts:
        r = await http.post(f"{url}/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0})
        r.raise_for_status()
        tokens += int(r.json()["usage"]["completion_tokens"])
    return tokens, time.perf_counter() - t0


async def run_round(url: str, model: str, clients: int, requests: int,
                    max_tokens: int, offset: int, case: str = "long") -> Round:
    async with httpx.AsyncClient(timeout=600) as http:
        jobs = []
        for c in range(clients):
            if case == "distinct":  # the same four requests, dealt out to the clients
                prompts = DISTINCT[c::clients]
            else:
                prompts = [PROMPTS[(offset + c + k * clients) % len(PROMPTS)]
                           for k in range(requests)]
            jobs.append(_client(http, url, model, prompts, max_tokens))
        t0 = time.perf_counter()
        done = await asyncio.gather(*jobs)
        wall = time.perf_counter() - t0
    return Round(sum(n for n, _ in done) / wall, [n / s for n, s in done])


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode} before it answered")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def _start(cmd: list[str], port: int, env: dict[str, str] | None = None,
           ) -> tuple[str, Callable[[], None]]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    url = f"http://127.0.0.1:{port}"

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()

    try:
        _wait(url, proc)
    except Exception:
        stop()
        raise
    return url, stop


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--requests", type=int, default=2, help="requests per client per round")
    ap.add_argument("--max-tokens", type=int, default=None,
                    help="default: 64 (long), 96 (distinct)")
    ap.add_argument("--case", choices=["long", "distinct"], default="long",
                    help="long: prompts that run to max_tokens, --requests each; distinct: "
                         "four short different requests dealt out to the clients")
    ap.add_argument("--server", choices=["same", "native", "none"], default="same",
                    help="llama-server build: the daemon's ISA flags (same), -DGGML_NATIVE=ON "
                         "(native), or no side-by-side (none)")
    ap.add_argument("--n-parallel", type=int, default=None,
                    help="override the shipped n_parallel (sweeps); default: as shipped")
    args = ap.parse_args(argv)
    if args.max_tokens is None:
        args.max_tokens = 96 if args.case == "distinct" else 64
    if args.case == "distinct":
        bad = [c for c in args.clients if c < 1 or len(DISTINCT) % c]
        if bad:
            ap.error(f"--case distinct deals {len(DISTINCT)} requests out: --clients "
                     f"{bad[0]} does not divide {len(DISTINCT)}")

    from agent.cores import generation_threads
    from agent.model_files import BUILTINS, assemble_builtin
    from agent.settings import QWEN_DEFAULT, Settings
    from bench.daemon_throughput import _free_port
    from bench.llama_server import ServerUnavailable, server_binary, server_command

    settings = Settings()  # shipped defaults (env files and EDGEROUTE_* apply as usual)
    qwen = next(e for e in settings.local_experts if e.model == QWEN_DEFAULT)
    parallel = args.n_parallel or qwen.n_parallel
    threads = generation_threads(qwen.n_threads).threads
    per_seq = qwen.n_ctx_per_seq or qwen.n_ctx
    model_path: Path = assemble_builtin(BUILTINS[QWEN_DEFAULT], settings.paths.cache_dir)

    sides: dict[str, tuple[str, str]] = {}  # side -> (url, model name)
    stops: list[Callable[[], None]] = []
    note = ""
    try:
        port = _free_port()
        env = {**os.environ, "EDGEROUTE_SERVER__PORT": str(port)}
        if args.n_parallel:
            env["EDGEROUTE_LOCAL_EXPERTS"] = json.dumps([
                {**e.model_dump(mode="json", exclude_none=True),
                 **({"n_parallel": parallel} if e.name == qwen.name else {})}
                for e in settings.local_experts])
        url, stop = _start([sys.executable, "-m", "agent", "serve"], port, env)
        stops.append(stop)
        sides["edgeroute"] = (url, qwen.name)
        if args.server != "none":
            try:
                binary = server_binary(settings.paths.cache_dir, args.server)
                sport = _free_port()
                url, stop = _start(server_command(binary, model_path, sport, threads,
                                                  parallel, per_seq), sport)
                stops.append(stop)
                sides["llama-server"] = (url, "qwen")
            except (ServerUnavailable, RuntimeError, TimeoutError) as exc:
                note = f"llama-server side skipped: {exc}"
        for url, model in sides.values():  # warm: page cache, first-call allocations
            asyncio.run(run_round(url, model, 1, 1, 8, 0))
        results: dict[tuple[str, int], list[Round]] = {(s, c): [] for s in sides
                                                       for c in args.clients}
        order = list(results)
        for r in range(args.rounds):
            for side, clients in (order if r % 2 == 0 else order[::-1]):
                url, model = sides[side]
                results[(side, clients)].append(asyncio.run(run_round(
                    url, model, clients, args.requests, args.max_tokens, r, args.case)))
    finally:
        for stop in stops:
            stop()

    report(results, args, parallel, threads, per_seq, note)
    return 0


def report(results: dict[tuple[str, int], list[Round]], args: Any, parallel: int,
           threads: int, per_seq: int, note: str) -> None:
    agg = {k: statistics.median(r.aggregate for r in v) for k, v in results.items()}
    per = {k: statistics.median(x for r in v for x in r.per_client) for k, v in results.items()}
    rows = []
    for (side, clients) in results:
        rows.append((f"{side}, {clients} client(s): aggregate tokens/s (median)",
                     f"{agg[(side, clients)]:.1f}"))
        rows.append((f"{side}, {clients} client(s): per-client tokens/s (median)",
                     f"{per[(side, clients)]:.1f}"))
    lo, hi = min(args.clients), max(args.clients)
    for side in dict.fromkeys(s for s, _ in results):
        goal = " (goal >= 1.2)" if args.case == "distinct" else " (goal >= 2.0)"
        rows.append((f"{side}: aggregate {hi} / {lo} client(s)"
                     + (goal if side == "edgeroute" else ""),
                     f"{agg[(side, hi)] / agg[(side, lo)]:.2f}"))
        rows.append((f"{side}: per-client {hi} / {lo} client(s)"
                     + (" (goal >= 0.5)" if side == "edgeroute" and args.case == "long"
                        else ""),
                     f"{per[(side, hi)] / per[(side, lo)]:.2f}"))
    if ("llama-server", hi) in agg:
        for c in args.clients:
            goal = " (goal >= 0.8)" if c == hi else ""
            rows.append((f"edgeroute / llama-server aggregate, {c} client(s){goal}",
                         f"{agg[('edgeroute', c)] / agg[('llama-server', c)]:.2f}"))
    width = max(len(r[0]) for r in rows)
    work = ("the same 4 short distinct requests per round, dealt out to the clients"
            if args.case == "distinct" else f"{args.requests} requests per client")
    print(f"local batching ({args.case}): Qwen2.5-Coder-0.5B, daemon defaults (n_parallel "
          f"{parallel}, {threads} threads, {per_seq} tokens per sequence); llama-server "
          f"({args.server} build) at the same; max_tokens {args.max_tokens}, temperature 0, "
          f"{work}, {args.rounds} rounds, interleaved")
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>9}")
    if note:
        print(f"  note: {note}")


if __name__ == "__main__":
    raise SystemExit(main())
