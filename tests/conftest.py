"""Shared fixtures: real models from PyPI packages, real servers on loopback, and user
directories pointed at temp dirs so no test touches the real ones."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.postgres import PgServer

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
MODEL_CACHE = Path(os.environ.get("EDGEROUTE_TEST_MODEL_CACHE", REPO / ".venv" / "model-cache"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``@pytest.mark.anyio``) run on asyncio, like the daemon."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own data/config dirs and no env files but its own."""
    monkeypatch.setenv("EDGEROUTE_PATHS__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EDGEROUTE_PATHS__CONFIG_DIR", str(tmp_path / "config"))
    # The assembled GGUF is 491 MB: share it across tests instead of rebuilding per test.
    monkeypatch.setenv("EDGEROUTE_PATHS__CACHE_DIR", str(MODEL_CACHE))
    monkeypatch.setenv("EDGEROUTE_ENV_FILES", "")
    for key in list(os.environ):
        if key.startswith("EDGEROUTE_") and not key.startswith("EDGEROUTE_TEST_") and key not in {
            "EDGEROUTE_PATHS__DATA_DIR", "EDGEROUTE_PATHS__CONFIG_DIR",
            "EDGEROUTE_PATHS__CACHE_DIR", "EDGEROUTE_ENV_FILES",
        }:
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def qwen_gguf() -> Path:
    from agent.model_files import BUILTINS, assemble_builtin
    from agent.settings import QWEN_DEFAULT

    return assemble_builtin(BUILTINS[QWEN_DEFAULT], MODEL_CACHE)


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    from agent.model_files import BUILTINS, assemble_builtin
    from agent.settings import SMOLLM2_DEFAULT

    return assemble_builtin(BUILTINS[SMOLLM2_DEFAULT], MODEL_CACHE)


@contextmanager
def llama_server(model: Path, *args: str) -> Iterator[str]:
    """llama-cpp-python's own OpenAI-compatible server on a free loopback port; yields its
    base URL ending in /v1."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
         "--host", "127.0.0.1", "--port", str(port), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc=proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def cloud_server(smollm_gguf: Path) -> Iterator[str]:
    """llama-cpp-python's own OpenAI-compatible server on loopback, standing in for a
    cloud expert (SmolLM2-135M-Instruct). Yields its base URL ending in /v1."""
    # llama-cpp-python's server cancels a running stream when another request arrives
    # (interrupt_requests=True): a real cloud serves concurrent streams side by side.
    with llama_server(smollm_gguf, "--n_ctx", "4096", "--model_alias", "smollm2-cloud",
                      "--interrupt_requests", "false") as url:
        yield url


@pytest.fixture(scope="session")
def logprobs_server(smollm_gguf: Path) -> Iterator[str]:
    """The same server with ``logits_all``, so it can answer ``logprobs`` (it keeps
    n_ctx x vocabulary floats: a small context)."""
    with llama_server(smollm_gguf, "--n_ctx", "1024", "--model_alias", "smollm2-logprobs",
                      "--logits_all", "true", "--interrupt_requests", "false") as url:
        yield url


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """A real PostgreSQL server for the session (tests/postgres.py): the machine's server
    binaries in a temp dir, on a free loopback port."""
    server = PgServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def fleet_url(postgres: PgServer) -> str:
    """A fresh database on the session's server, for one test's fleet ledger."""
    return postgres.create_database()
