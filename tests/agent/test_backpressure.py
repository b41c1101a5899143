"""Backpressure: a busy expert with a full queue answers 503 + Retry-After at once, and
/health stays fast while it is busy."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.agent.conftest import running_daemon
from tests.conftest import MODEL_CACHE, free_port


def test_queue_overflow_is_503_with_retry_after(smollm_gguf: Path, tmp_path: Path) -> None:
    from agent.settings import Settings

    settings = Settings(
        paths={"data_dir": tmp_path / "d", "cache_dir": MODEL_CACHE, "config_dir": tmp_path},
        server={"port": free_port(), "max_queue_per_expert": 1},
        local_experts=[{"name": "smol", "model": str(smollm_gguf), "n_threads": 1}],
        router={"bundle": "none"},
    )
    body = {"messages": [{"role": "user", "content": "Count to fifty."}], "max_tokens": 48}

    async def fire(url: str) -> tuple[list[httpx.Response], float]:
        async with httpx.AsyncClient(timeout=120) as client:
            posts = [asyncio.create_task(client.post(f"{url}/predict", json=body))
                     for _ in range(6)]
            await asyncio.sleep(0.3)
            t = time.perf_counter()
            health = await client.get(f"{url}/health")
            health_s = time.perf_counter() - t
            assert health.status_code == 200
            return list(await asyncio.gather(*posts)), health_s

    with running_daemon(settings) as url:
        replies, health_s = asyncio.run(fire(url))
    codes = sorted(r.status_code for r in replies)
    assert codes.count(200) >= 2 and codes.count(503) >= 1, codes  # 4 batched + 1 queued
    busy = next(r for r in replies if r.status_code == 503)
    assert int(busy.headers["retry-after"]) > 0
    assert busy.json()["error"]["code"] == "expert_unavailable"
    assert health_s < 1.0
