"""Bounded streaming load on loopback: N concurrent clients, each streaming chat
completions back to back for a fixed time. Counts errors (non-200, in-band error events,
streams without ``[DONE]``) and reports time-to-first-token and total latency medians/p99.

    .venv/bin/python -m bench.load [--clients 50] [--seconds 60] [--max-tokens 8] [--distinct]

Every stream asks "Say hello." by default, so a local model's prompt cache holds all but
the last prompt token of each; ``--distinct`` starts every prompt with its own number, so
streams share only the chat template's head (the load of different users' questions).

Without ``--url`` it starts a daemon in-process on a free port with the SmolLM2 expert.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class LoadResult:
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    total_s: list[float] = field(default_factory=list)
    health_s: list[float] = field(default_factory=list)

    def pct(self, values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] \
            if len(values) > 1 else values[0]

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("streams completed", str(self.ok)),
            ("errors", str(len(self.errors))),
            ("time to first token p50 / p99 (ms)",
             f"{self.pct(self.ttft_s, 50) * 1e3:.0f} / {self.pct(self.ttft_s, 99) * 1e3:.0f}"),
            ("stream total p50 / p99 (ms)",
             f"{self.pct(self.total_s, 50) * 1e3:.0f} / {self.pct(self.total_s, 99) * 1e3:.0f}"),
            ("/health under load p50 / p99 (ms)",
             f"{self.pct(self.health_s, 50) * 1e3:.1f} / {self.pct(self.health_s, 99) * 1e3:.1f}"),
        ]


async def _one_stream(client: httpx.AsyncClient, url: str, body: dict[str, Any],
                      res: LoadResult) -> None:
    t0 = time.perf_counter()
    first: float | None = None
    done = False
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                res.errors.append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    res.errors.append(f"in-band error: {event['error']}")
                    return
                if first is None and event["choices"] and event["choices"][0]["delta"].get(
                        "content"):
                    first = time.perf_counter()
    except httpx.HTTPError as exc:
        res.errors.append(f"{type(exc).__name__}: {exc}")
        return
    if not done:
        res.errors.append("stream ended without [DONE]")
        return
    end = time.perf_counter()
    res.ok += 1
    res.total_s.append(end - t0)
    res.ttft_s.append((first or end) - t0)


async def run_load(url: str, clients: int, seconds: float, max_tokens: int = 8,
                   model: str = "auto", distinct: bool = False) -> LoadResult:
    res = LoadResult()
    sent = 0

    def body() -> dict[str, Any]:
        nonlocal sent
        sent += 1
        text = f"Request {sent}: say hello." if distinct else "Say hello."
        return {"model": model, "messages": [{"role": "user", "content": text}],
                "max_tokens": max_tokens, "stream": True, "temperature": 0}

    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits) as client:

        async def worker() -> None:
            while time.monotonic() < deadline:
                await _one_stream(client, url, body(), res)

        async def prober() -> None:
            while time.monotonic() < deadline:
                t = time.perf_counter()
                r = await client.get(f"{url}/health")
                if r.status_code == 200:
                    res.health_s.append(time.perf_counter() - t)
                await asyncio.sleep(0.5)

        await asyncio.gather(prober(), *(worker() for _ in range(clients)))
    return res


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    print(title)
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>15}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running daemon; default: start one in-process")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--distinct", action="store_true",
                    help="a different prompt per stream (default: all say 'Say hello.')")
    args = ap.parse_args(argv)
    if args.url:
        res = asyncio.run(run_load(args.url, args.clients, args.seconds, args.max_tokens,
                                   distinct=args.distinct))
    else:
        from agent.settings import SMOLLM2_DEFAULT, Settings
        from bench.daemon_throughput import _free_port, start_daemon

        settings = Settings(server={"port": _free_port(), "max_queue_per_expert": 256},
                            local_experts=[{"name": "smollm2-135m", "model": SMOLLM2_DEFAULT}],
                            router={"bundle": "none"})
        url, stop = start_daemon(settings)
        try:
            res = asyncio.run(run_load(url, args.clients, args.seconds, args.max_tokens,
                                       distinct=args.distinct))
        finally:
            stop()
    print_table(f"streaming load: {args.clients} clients x {args.seconds:g} s, "
                f"max_tokens {args.max_tokens}, "
                f"{'a distinct prompt per stream' if args.distinct else 'one prompt'}",
                res.rows())
    return 1 if res.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
