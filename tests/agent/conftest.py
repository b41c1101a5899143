"""A real daemon: uvicorn on a free loopback port, real GGUF experts, in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def running_daemon(settings, runtime=None, wrap=None) -> Iterator[str]:
    """Serve ``settings`` with uvicorn on its port in a thread; yields the base URL.
    ``wrap``: an ASGI app around the daemon's (a test's recorder of what reached it)."""
    import uvicorn

    from agent.app import create_app
    from agent.runtime import build_runtime

    app = create_app(settings, runtime or build_runtime(settings))
    if wrap is not None:
        app = wrap(app)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.server.port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("daemon did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{settings.server.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="session")
def runtime(daemon_settings):
    """The daemon's runtime (real models), shared by in-process app tests."""
    from agent.runtime import build_runtime

    return build_runtime(daemon_settings)


@pytest.fixture(scope="session")
def daemon(daemon_settings, runtime) -> Iterator[str]:
    """Base URL (no trailing slash) of a running daemon; its shutdown closes the runtime."""
    with running_daemon(daemon_settings, runtime) as url:
        yield url


def share_local_expert(monkeypatch: pytest.MonkeyPatch, expert: object) -> None:
    """build_runtime stays real; only its local model load returns ``expert``, one model
    shared by a module's tests (each daemon closes nothing of it)."""
    from agent.experts.local import LocalExpert

    async def keep_open() -> None:
        return None

    monkeypatch.setattr(LocalExpert, "load",
                        classmethod(lambda cls, cfg, path, decode=None: expert))
    monkeypatch.setattr(expert, "aclose", keep_open)
