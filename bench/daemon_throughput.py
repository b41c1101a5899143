"""Daemon vs llama-cpp-python directly: generation tokens/s, and /predict overhead.

Same model file, same settings, same prompts, interleaved in one run (the order flips every
round), so machine noise hits both sides alike. Prints medians and ratios.

    .venv/bin/python -m bench.daemon_throughput [--rounds 8] [--max-tokens 64]
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
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    from llama_cpp import Llama

    from agent.model_files import BUILTINS, assemble_builtin
    from agent.settings import QWEN_DEFAULT, Settings

    settings = Settings(
        server={"port": _free_port(), "max_tokens_cap": 4096},
        local_experts=[{"name": "qwen", "model": QWEN_DEFAULT, "n_threads": args.threads}],
        router={"bundle": "none"},
    )
    path: Path = assemble_builtin(BUILTINS[QWEN_DEFAULT], settings.paths.cache_dir)
    direct = Llama(model_path=str(path), n_ctx=2048, n_threads=args.threads, seed=0,
                   verbose=False)
    url, stop = start_daemon(settings)
    client = httpx.Client(timeout=300)

    def run_direct(prompt: str, max_tokens: int) -> tuple[float, int]:
        t = time.perf_counter()
        out = direct.create_chat_completion(
            messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
            temperature=0.0)
        return time.perf_counter() - t, out["usage"]["completion_tokens"]

    def run_daemon(prompt: str, max_tokens: int) -> tuple[float, int]:
        t = time.perf_counter()
        r = client.post(f"{url}/predict", json={
            "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.0})
        r.raise_for_status()
        return time.perf_counter() - t, r.json()["usage"]["completion_tokens"]

    tps: dict[str, list[float]] = {"direct": [], "daemon": []}
    one: dict[str, list[float]] = {"direct": [], "daemon": []}
    runners = {"direct": run_direct, "daemon": run_daemon}
    for p in PROMPTS:  # warm both sides (prompt caches, page cache)
        run_direct(p, 4)
        run_daemon(p, 4)
    for r in range(args.rounds):
        order = ["direct", "daemon"] if r % 2 == 0 else ["daemon", "direct"]
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
    rows = [
        ("generation tokens/s, llama-cpp-python direct (median)", f"{med['direct']:.1f}"),
        ("generation tokens/s, through the daemon /predict (median)", f"{med['daemon']:.1f}"),
        ("ratio daemon / direct (goal >= 0.97)", f"{med['daemon'] / med['direct']:.3f}"),
        ("1-token request, direct (median ms)", f"{med1['direct'] * 1e3:.1f}"),
        ("1-token request, daemon /predict (median ms)", f"{med1['daemon'] * 1e3:.1f}"),
        ("/predict overhead excl. generation (median ms)",
         f"{(med1['daemon'] - med1['direct']) * 1e3:.2f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"daemon vs direct llama.cpp: Qwen2.5-Coder-0.5B, {args.threads} threads, "
          f"max_tokens {args.max_tokens}, {args.rounds} rounds x {len(PROMPTS)} prompts")
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>9}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
