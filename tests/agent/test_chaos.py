"""Chaos: 1,000 requests to a daemon whose cloud expert sits behind a fault proxy that
breaks 30% of calls (silence, reset mid-body, slow drip, 429, 500). Every reply must still
be a correct answer: from the cloud, or from the local expert after a fallback."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.agent.conftest import running_daemon
from tests.cloud_bridge.faultproxy import Fault, FaultProxy, ProxyOptions, read_request
from tests.conftest import MODEL_CACHE, free_port

N_REQUESTS = 1000
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


def test_1000_requests_with_30_percent_cloud_faults_all_answered(
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
            cloud_experts=[{
                "name": "cloud", "base_url": proxy.base_url(), "model": "smollm2-cloud",
                "connect_timeout_s": 1, "first_byte_timeout_s": 3, "read_timeout_s": 3,
                "deadline_s": 6, "max_retries": 1, "retry_backoff_base_s": 0.02,
                "retry_backoff_cap_s": 0.05, "breaker_failure_threshold": 1000}],
            router={"bundle": "none", "default_expert": "cloud"},
        )
        with running_daemon(settings) as url:
            replies = asyncio.run(_fire(url))
        applied = list(proxy.applied)
    failed = [r for r in replies if isinstance(r, str)]
    assert failed == [], failed[:5]
    experts = [r["expert"] for r in replies if isinstance(r, dict)]
    assert len(experts) == N_REQUESTS
    faulted = sum(f is not Fault.PASS for f in applied)
    assert faulted >= 0.2 * N_REQUESTS  # the faults really happened
    assert experts.count("local") > 0 and experts.count("cloud") > 0
    print(f"\nchaos: {N_REQUESTS} requests, {faulted} faulted connections of "
          f"{len(applied)}, answered by cloud {experts.count('cloud')}, "
          f"by local fallback {experts.count('local')}, failed 0")


async def _fire(url: str) -> list[dict | str]:
    sem = asyncio.Semaphore(8)
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1,
            "temperature": 0}

    async with httpx.AsyncClient(timeout=120) as client:

        async def one() -> dict | str:
            async with sem:
                try:
                    r = await client.post(f"{url}/predict", json=body)
                except httpx.HTTPError as exc:
                    return f"{type(exc).__name__}: {exc}"
            if r.status_code != 200:
                return f"HTTP {r.status_code}: {r.text[:200]}"
            out = r.json()
            if out["choices"][0]["message"]["content"] is None:
                return "empty answer"
            return out

        return await asyncio.gather(*(one() for _ in range(N_REQUESTS)))
