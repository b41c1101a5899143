"""50 concurrent streaming clients for 20 s against a real daemon: no errors, and /health
stays fast. Duration via EDGEROUTE_TEST_LOAD_SECONDS (60 for the issue's figure; `make
bench` runs bench.load for 60 s)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from bench.load import print_table, run_load
from tests.agent.conftest import running_daemon
from tests.conftest import MODEL_CACHE, free_port


def test_50_streaming_clients_without_errors(smollm_gguf: Path, tmp_path: Path,
                                                     capsys) -> None:
    from agent.settings import Settings

    seconds = float(os.environ.get("EDGEROUTE_TEST_LOAD_SECONDS", "20"))
    settings = Settings(
        paths={"data_dir": tmp_path / "d", "cache_dir": MODEL_CACHE, "config_dir": tmp_path},
        server={"port": free_port(), "max_queue_per_expert": 64},
        local_experts=[{"name": "smol", "model": str(smollm_gguf), "n_threads": 1}],
        router={"bundle": "none"},
    )
    with running_daemon(settings) as url:
        res = asyncio.run(run_load(url, clients=50, seconds=seconds, max_tokens=8))
    with capsys.disabled():
        print()
        print_table(f"load test: 50 streaming clients x {seconds:g} s", res.rows())
    assert res.errors == [], res.errors[:5]
    assert res.ok >= 50  # every client finished at least one stream
    assert max(res.health_s) < 1.0  # /health never waits on a model
