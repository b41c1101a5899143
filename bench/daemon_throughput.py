"""Daemon vs llama-cpp-python directly: generation tokens/s, and /predict overhead.

The daemon runs as it ships (``n_threads`` unset: the default, physical cores); llama-cpp-
python runs directly at every explicit thread count from 1 to the logical CPUs. Same model
file, same prompts, interleaved in one run (the order flips every round), so machine noise
hits every side alike. Prints medians, the ratio of the shipped default to the best
explicit setting, and the daemon's overhead at the same thread count.

    .venv/bin/python -m bench.daemon_throughput [--rounds 8] [--max-tokens 64] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

PROMPTS = [
    "Write a Python function that reverses a string.",
    "Explain what a hash map is in two sentences.",
    "What is the capital of France? Answer briefly.",
    "List three prime numbers greater than 10.",
]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_daemon(settings: Any) -> tuple[str, Callable[[], None]]:
    import uvicorn

    from agent.app import create_app
    from agent.runtime import build_runtime

    app = create_app(settings, build_runtime(settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.server.port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join(10)

    return f"http://127.0.0.1:{settings.server.port}", stop


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, nargs="*",
                    help="explicit thread counts for llama-cpp-python directly "
                         "(default: 1 .. the logical CPUs)")
    args = ap.parse_args(argv)

    import os

    from llama_cpp import Llama

    from agent.cores import physical_cores
    from agent.model_files import BUILTINS, assemble_builtin
    from agent.settings import QWEN_DEFAULT, Settings

    # The daemon as it ships: n_threads unset, so the default (physical cores) applies.
    settings = Settings(
        server={"port": _free_port(), "max_tokens_cap": 4096},
        local_experts=[{"name": "qwen", "model": QWEN_DEFAULT}],
        router={"bundle": "none"},
    )
    default = physical_cores()
    path: Path = assemble_builtin(BUILTINS[QWEN_DEFAULT], settings.paths.cache_dir)
    counts = args.threads or list(range(1, (os.cpu_count() or 1) + 1))
    direct = {t: Llama(model_path=str(path), n_ctx=2048, n_threads=t, seed=0, verbose=False)
              for t in counts}
    url, stop = start_daemon(settings)
    client = httpx.Client(timeout=300)

    def run_direct(t: int) -> Callable[[str, int], tuple[float, int]]:
        def run(prompt: str, max_tokens: int) -> tuple[float, int]:
            start = time.perf_counter()
            out = direct[t].create_chat_completion(
                messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                temperature=0.0)
            return time.perf_counter() - start, out["usage"]["completion_tokens"]
        return run

    def run_daemon(prompt: str, max_tokens: int) -> tuple[float, int]:
        t = time.perf_counter()
        r = client.post(f"{url}/predict", json={
            "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.0})
        r.raise_for_status()
        return time.perf_counter() - t, r.json()["usage"]["completion_tokens"]

    runners: dict[str, Callable[[str, int], tuple[float, int]]] = {
        "daemon": run_daemon, **{f"direct {t}": run_direct(t) for t in counts}}
    tps: dict[str, list[float]] = {k: [] for k in runners}
    one: dict[str, list[float]] = {k: [] for k in runners}
    for p in PROMPTS:  # warm every side (prompt caches, page cache)
        for run in runners.values():
            run(p, 4)
    sides = list(runners)
    for r in range(args.rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for p in PROMPTS:
            for side in order:
                secs, n = runners[side](p, args.max_tokens)
                if n:
                    tps[side].append(n / secs)
                secs1, _ = runners[side](p, 1)
                one[side].append(secs1)
    stop()

    med = {k: statistics.median(v) for k, v in tps.items()}
    med1 = {k: statistics.median(v) for k, v in one.items()}
    best = max(counts, key=lambda t: med[f"direct {t}"])
    same = f"direct {default.threads}" if default.threads in counts else f"direct {best}"
    rows = [(f"generation tokens/s, direct, {t} threads (median)", f"{med[f'direct {t}']:.1f}")
            for t in counts]
    rows += [
        (f"generation tokens/s, daemon /predict, default threads ({default.threads})",
         f"{med['daemon']:.1f}"),
        (f"ratio daemon default / best explicit ({best} threads) (goal >= 0.95)",
         f"{med['daemon'] / med[f'direct {best}']:.3f}"),
        (f"ratio daemon / direct, same threads ({same.split()[1]}) (goal >= 0.97)",
         f"{med['daemon'] / med[same]:.3f}"),
        ("1-token request, direct (median ms)", f"{med1[same] * 1e3:.1f}"),
        ("1-token request, daemon /predict (median ms)", f"{med1['daemon'] * 1e3:.1f}"),
        ("/predict overhead excl. generation (median ms)",
         f"{(med1['daemon'] - med1[same]) * 1e3:.2f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"daemon (shipped default threads: {default.how}) vs llama-cpp-python directly at "
          f"{counts} threads: Qwen2.5-Coder-0.5B, max_tokens {args.max_tokens}, "
          f"{args.rounds} rounds x {len(PROMPTS)} prompts, interleaved")
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>9}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
