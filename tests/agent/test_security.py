"""Security defaults: Host allow-list, bearer token, CORS off, loopback-only bind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from agent.errors import ConfigError
from agent.http_security import check_bind, host_name

OK = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize("host", ["evil.com", "evil.com:2345", ":2345", "0.0.0.0",
                                  "0.0.0.0:2345", "127.0.0.1.evil.com", "localhost.evil.com",
                                  "[::2]:2345", ""])
def test_foreign_host_headers_are_rejected(daemon: str, host: str) -> None:
    r = httpx.get(f"{daemon}/health", headers={"Host": host})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "Host"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:2345", "localhost:8080",
                                  "LOCALHOST", "[::1]:2345"])
def test_loopback_host_headers_pass(daemon: str, host: str) -> None:
    assert httpx.get(f"{daemon}/health", headers={"Host": host}).status_code == 200


def test_x_forwarded_host_is_not_trusted(daemon: str) -> None:
    r = httpx.get(f"{daemon}/health", headers={"Host": "evil.com",
                                                "X-Forwarded-Host": "127.0.0.1"})
    assert r.status_code == 400


def test_cors_is_off_by_default(daemon: str) -> None:
    r = httpx.options(f"{daemon}/v1/chat/completions",
                      headers={"Origin": "https://evil.com",
                               "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers


def _app_client(daemon_settings, runtime, tmp_path: Path, **server) -> httpx.AsyncClient:
    from agent.app import create_app
    from agent.settings import Settings

    data = daemon_settings.model_dump()
    data["server"].update(server)
    app = create_app(Settings(**data), runtime)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                             base_url="http://127.0.0.1")


@pytest.mark.anyio
async def test_bearer_token_is_required_and_compared(daemon_settings, runtime,
                                                     tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-0123456789\n")
    async with _app_client(daemon_settings, runtime, tmp_path,
                           api_token_file=token_file) as client:
        assert (await client.get("/health")).status_code == 200  # liveness stays open
        r = await client.post("/predict", json=OK)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = await client.post("/predict", json=OK,
                              headers={"Authorization": "Bearer wrong-token-0123456789"})
        assert r.status_code == 401
        r = await client.get("/v1/models",
                             headers={"Authorization": "Bearer s3cret-token-0123456789"})
        assert r.status_code == 200


@pytest.mark.anyio
async def test_cors_when_origins_listed(daemon_settings, runtime, tmp_path: Path) -> None:
    async with _app_client(daemon_settings, runtime, tmp_path,
                           cors_origins=["https://app.example"]) as client:
        r = await client.options("/v1/models", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "GET"})
        assert r.headers.get("access-control-allow-origin") == "https://app.example"
        r = await client.options("/v1/models", headers={
            "Origin": "https://evil.com", "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in r.headers


def test_short_token_is_refused(tmp_path: Path) -> None:
    from agent.http_security import read_token

    (tmp_path / "t").write_text("short")
    with pytest.raises(ConfigError, match="shorter than 16"):
        read_token(tmp_path / "t")


@pytest.mark.parametrize(("host", "ok"), [("127.0.0.1", True), ("::1", True),
                                          ("localhost", True), ("0.0.0.0", False),
                                          ("192.168.1.10", False), ("::", False)])
def test_non_loopback_bind_needs_a_token(host: str, ok: bool) -> None:
    if ok:
        check_bind(host, token_configured=False)
    else:
        with pytest.raises(ConfigError, match="api_token_file"):
            check_bind(host, token_configured=False)
        check_bind(host, token_configured=True)


def test_serve_refuses_public_bind_from_cli() -> None:
    r = subprocess.run([sys.executable, "-m", "agent", "serve", "--host", "0.0.0.0"],
                       capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert r.returncode == 2
    assert "api_token_file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_host_name_parsing() -> None:
    assert host_name("[::1]:80") == "::1"
    assert host_name("LocalHost:1") == "localhost"
    assert host_name(":2345") == ""
