"""Cold start and memory of the daemon as a user runs it: ``python -m agent serve`` in a
fresh process, time until ``/health`` answers, RSS after start and after one answer.
Compared in the same run against loading the same GGUF with llama-cpp-python alone.

    .venv/bin/python -m bench.startup [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import httpx

from bench.daemon_throughput import _free_port


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def daemon_once(env: dict[str, str]) -> tuple[float, float, float]:
    port = _free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "agent", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError("daemon exited during start")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.02)
        ready = time.perf_counter() - t0
        idle = rss_mb(proc.pid)
        httpx.post(f"{url}/predict", timeout=120, json={
            "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
        return ready, idle, rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(20)


def direct_once(model_path: str) -> float:
    code = ("import time,sys; t=time.perf_counter(); from llama_cpp import Llama; "
            f"Llama(model_path={model_path!r}, verbose=False); "
            "print(time.perf_counter()-t)")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - t0


def rows(runs: int = 3) -> list[tuple[str, str]]:
    from agent.model_files import BUILTINS, assemble_builtin
    from agent.settings import QWEN_DEFAULT, SMOLLM2_DEFAULT, Settings

    cache = Settings().paths.cache_dir
    qwen = str(assemble_builtin(BUILTINS[QWEN_DEFAULT], cache))
    assemble_builtin(BUILTINS[SMOLLM2_DEFAULT], cache)
    env = {**os.environ, "EDGEROUTE_ENV_FILES": ""}
    daemon = [daemon_once(env) for _ in range(runs)]
    direct = [direct_once(qwen) for _ in range(runs)]
    ready = statistics.median(d[0] for d in daemon)
    base = statistics.median(direct)
    return [
        ("cold start to /health, default daemon (median s)", f"{ready:.2f}"),
        ("process start + load Qwen GGUF alone (median s)", f"{base:.2f}"),
        ("cold start ratio daemon / bare llama.cpp load", f"{ready / base:.2f}"),
        ("daemon RSS idle (median MB)", f"{statistics.median(d[1] for d in daemon):.0f}"),
        ("daemon RSS after one answer (median MB)",
         f"{statistics.median(d[2] for d in daemon):.0f}"),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    from bench.load import print_table

    print_table("daemon cold start and memory (default experts: Qwen + SmolLM2)",
                rows(args.runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
