"""A real daemon: uvicorn on a free loopback port, real GGUF experts, in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MODEL_CACHE, free_port


@pytest.fixture(scope="session")
def daemon_settings(qwen_gguf: Path, smollm_gguf: Path, tmp_path_factory: pytest.TempPathFactory):
    from agent.settings import QWEN_DEFAULT, SMOLLM2_DEFAULT, Settings

    tmp = tmp_path_factory.mktemp("daemon")
    return Settings(
        paths={"data_dir": tmp / "data", "cache_dir": MODEL_CACHE, "config_dir": tmp / "cfg"},
        server={"port": free_port(), "max_body_bytes": 64_000, "max_tokens_cap": 512},
        local_experts=[
            {"name": "qwen2.5-coder-0.5b", "model": QWEN_DEFAULT, "n_threads": 2},
            {"name": "smollm2-135m", "model": SMOLLM2_DEFAULT, "n_threads": 2},
        ],
        router={"bundle": "none"},
    )


@pytest.fixture(scope="session")
def daemon(daemon_settings) -> Iterator[str]:
    """Base URL (no trailing slash) of a running daemon."""
    import uvicorn

    from agent.app import create_app
    from agent.runtime import build_runtime

    runtime = build_runtime(daemon_settings)
    app = create_app(daemon_settings, runtime)
    config = uvicorn.Config(app, host="127.0.0.1", port=daemon_settings.server.port,
                            log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("daemon did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{daemon_settings.server.port}"
    server.should_exit = True
    thread.join(timeout=15)
