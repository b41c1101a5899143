"""Chaos: 400 requests (EDGEROUTE_TEST_CHAOS_REQUESTS; 1,000 for the issue's figure) to a
daemon whose cloud expert sits behind a fault proxy that breaks 30% of calls (silence, reset
mid-body, slow drip, 429, 500), with the DEFAULT timeouts and retries. Every reply must
still be a non-empty answer: from the cloud, or from the local expert after a fallback.
Prints the fault-to-fallback latency (request to the fallback's whole answer) p50/p99 for
docs/benchmarks.md (run with -s)."""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.agent.conftest import running_daemon
from tests.cloud_bridge.faultproxy import Fault, FaultProxy, ProxyOptions, read_request
from tests.conftest import MODEL_CACHE, free_port

N_REQUESTS = int(os.environ.get("EDGEROUTE_TEST_CHAOS_REQUESTS", "400"))
FAULT_SHARE = 0.3
FAULTS = [Fault.SILENCE, Fault.RESET_MID_BODY, Fault.SLOW_DRIP, Fault.STATUS_429,
          Fault.STATUS_500]


class OneCallPerConnection(FaultProxy):
    """The bridge keeps connections alive, and faults are chosen per connection: ask the
    upstream to close after each answer so every call opens a connection and draws a
    fault of its own."""

    async def _client_to_upstream(self, reader, up_writer) -> None:  # type: ignore[override]
        head, body = await read_request(reader)
        self.request_heads.append(head)
        lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"connection:")]
        head = b"\r\n".join(lines[:-2] + [b"Connection: close", b"", b""])
        up_writer.write(head + body)
        await up_writer.drain()


def test_requests_with_30_percent_cloud_faults_all_answered(
    smollm_gguf: Path, cloud_server: str, tmp_path: Path
) -> None:
    from agent.settings import Settings

    rng = random.Random(7)
    plan = [rng.choice(FAULTS) if rng.random() < FAULT_SHARE else Fault.PASS
            for _ in range(4 * N_REQUESTS)]  # retries draw connections too
    port = urlsplit(cloud_server).port
    assert port is not None
    opts = ProxyOptions(retry_after="0", drip_interval_s=0.05)
    with OneCallPerConnection(port, opts) as proxy:
        proxy.set_plan(plan)
        settings = Settings(
            paths={"data_dir": tmp_path / "d", "cache_dir": MODEL_CACHE, "config_dir": tmp_path},
            server={"port": free_port(), "max_queue_per_expert": 64},
            local_experts=[{"name": "local", "model": str(smollm_gguf), "n_threads": 1,
                            "n_ctx": 512}],
            # Default timeouts and retries; only the breaker is kept shut, so that every
            # request meets the faults instead of skipping the cloud for a cooldown.
            cloud_experts=[{
                "name": "cloud", "base_url": proxy.base_url(), "model": "smollm2-cloud",
                "breaker_failure_threshold": 1000}],
            router={"bundle": "none", "default_expert": "cloud"},
        )
        with running_daemon(settings) as url:
            replies = asyncio.run(_fire(url))
        applied = list(proxy.applied)
    failed = [r for r in replies if isinstance(r, str)]
    assert failed == [], failed[:5]
    answers = [r for r in replies if isinstance(r, tuple)]
    experts = [body["expert"] for _, body in answers]
    assert len(experts) == N_REQUESTS
    faulted = sum(f is not Fault.PASS for f in applied)
    assert faulted >= 0.2 * N_REQUESTS  # the faults really happened
    assert experts.count("local") > 0 and experts.count("cloud") > 0
    fallback_s = sorted(s for s, body in answers if body["routing"]["fallback_from"])
    q = statistics.quantiles(fallback_s, n=100, method="inclusive")
    print(f"\nchaos: {N_REQUESTS} requests, {faulted} faulted connections of "
          f"{len(applied)}, answered by cloud {experts.count('cloud')}, "
          f"by local fallback {experts.count('local')}, failed 0; fault-to-fallback "
          f"answer p50 {q[49]:.2f} s, p99 {q[98]:.2f} s, max {fallback_s[-1]:.2f} s "
          f"(n={len(fallback_s)})")


async def _fire(url: str) -> list[tuple[float, dict] | str]:
    """(seconds, reply) per answered request; a string saying what went wrong otherwise."""
    sem = asyncio.Semaphore(8)
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
            "temperature": 0}

    async with httpx.AsyncClient(timeout=120) as client:

        async def one() -> tuple[float, dict] | str:
            async with sem:
                t = time.monotonic()
                try:
                    r = await client.post(f"{url}/predict", json=body)
                except httpx.HTTPError as exc:
                    return f"{type(exc).__name__}: {exc}"
                elapsed = time.monotonic() - t
            if r.status_code != 200:
                return f"HTTP {r.status_code}: {r.text[:200]}"
            out = r.json()
            if not (out["choices"][0]["message"]["content"] or "").strip():
                return f"empty answer from {out['expert']}"
            return elapsed, out

        return await asyncio.gather(*(one() for _ in range(N_REQUESTS)))
