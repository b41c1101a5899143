"""Added latency of cloud_bridge vs plain httpx against the same real server, same run.

Starts llama-cpp-python's OpenAI-compatible server on loopback (SmolLM2-135M, the same
stand-in for a cloud expert the tests use), then times the same small request through a
bare ``httpx.AsyncClient`` and through ``BridgeClient``, plain and streaming, interleaved
(the order flips every round) so machine noise hits both sides alike. Both keep their
connection pool warm. Prints medians, the added milliseconds and the ratio.

    .venv/bin/python -m bench.bridge_overhead [--reps 25] [--max-tokens 4]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

MESSAGES = [{"role": "user", "content": "Name a colour."}]
MODEL = "smollm2-cloud"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(gguf: Path, threads: int) -> tuple[str, subprocess.Popen[bytes]]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host",
         "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", str(threads),
         "--model_alias", MODEL, "--interrupt_requests", "false"],  # concurrent streams
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}")
        try:
            if httpx.get(base + "/models", timeout=1).status_code == 200:
                return base, proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("llama_cpp.server did not answer within 120 s")


def _body(max_tokens: int, stream: bool) -> dict[str, Any]:
    return {"model": MODEL, "messages": MESSAGES, "max_tokens": max_tokens,
            "temperature": 0.0, "seed": 1, "stream": stream}


async def _run(base: str, reps: int, max_tokens: int) -> dict[str, dict[str, list[float]]]:
    from cloud_bridge.client import BridgeClient, Endpoint
    from cloud_bridge.wire import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=1)
    raw = httpx.AsyncClient(timeout=60)
    bridge = BridgeClient(Endpoint(name="bench", base_url=base, model=MODEL))
    url = base + "/chat/completions"

    async def raw_plain() -> None:
        r = await raw.post(url, json=_body(max_tokens, False))
        r.raise_for_status()
        assert r.json()["choices"][0]["message"] is not None

    async def raw_stream() -> None:
        async with raw.stream("POST", url, json=_body(max_tokens, True)) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    break

    async def bridge_plain() -> None:
        await bridge.complete(MESSAGES, params)

    async def bridge_stream() -> None:
        async for _ in bridge.stream(MESSAGES, params):
            pass

    cases: dict[str, tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]] = {
        "plain": (raw_plain, bridge_plain), "stream": (raw_stream, bridge_stream)}
    times: dict[str, dict[str, list[float]]] = {
        k: {"httpx": [], "bridge": [], "httpx_cpu": [], "bridge_cpu": []} for k in cases}
    try:
        for fn_pair in cases.values():  # warm-up: connections, the server's first eval
            for fn in fn_pair:
                await fn()
        for i in range(reps):
            for name, (raw_fn, bridge_fn) in cases.items():
                order = [("httpx", raw_fn), ("bridge", bridge_fn)]
                for side, fn in order if i % 2 == 0 else reversed(order):
                    t, cpu = time.perf_counter(), time.process_time()
                    await fn()
                    times[name][side].append(time.perf_counter() - t)
                    times[name][side + "_cpu"].append(time.process_time() - cpu)
    finally:
        await raw.aclose()
        await bridge.aclose()
    return times


def table(times: dict[str, dict[str, list[float]]]) -> str:
    """Wall medians (what a user waits) and client CPU medians (the bridge's own work,
    free of the server's generation noise)."""
    rows = ["| call | httpx ms | bridge ms | added ms | ratio | httpx CPU ms | bridge CPU ms "
            "| added CPU ms | reps |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, sides in times.items():
        a, b, ca, cb = (statistics.median(sides[k]) * 1e3
                        for k in ("httpx", "bridge", "httpx_cpu", "bridge_cpu"))
        rows.append(f"| {name} | {a:.2f} | {b:.2f} | {b - a:+.2f} | {b / a:.3f} | {ca:.2f} | "
                    f"{cb:.2f} | {cb - ca:+.2f} | {len(sides['httpx'])} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--reps", type=int, default=25, help="Timed calls per side and mode.")
    ap.add_argument("--max-tokens", type=int, default=4, help="Tokens per answer.")
    ap.add_argument("--threads", type=int, default=1, help="Server generation threads.")
    args = ap.parse_args(argv)

    from agent.model_files import BUILTINS, assemble_builtin
    from agent.settings import SMOLLM2_DEFAULT, load_settings

    gguf = assemble_builtin(BUILTINS[SMOLLM2_DEFAULT], load_settings().paths.cache_dir)
    base, proc = start_server(gguf, args.threads)
    try:
        times = asyncio.run(_run(base, args.reps, args.max_tokens))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(f"cloud_bridge vs plain httpx, same llama.cpp server (SmolLM2-135M), "
          f"max_tokens={args.max_tokens}, interleaved")
    print(table(times))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
