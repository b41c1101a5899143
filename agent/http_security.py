"""ASGI guards in front of every route: Host allow-list (DNS rebinding) and the optional
bearer token. Both answer with the OpenAI error body before any route runs.

``X-Forwarded-Host`` is never read: behind a proxy, configure the proxy's Host instead.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
from pathlib import Path
from typing import Any

from agent.errors import ConfigError, openai_error_body

OPEN_PATHS = frozenset({"/health"})


async def _reply(send: Any, status: int, message: str, param: str | None, code: str,
                 extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(openai_error_body(message, "invalid_request_error", param, code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            *(extra_headers or [])]})
    await send({"type": "http.response.body", "body": body})


def host_name(value: str) -> str:
    """The name part of a Host header: strips the port and IPv6 brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else ""
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


class HostAllowList:
    def __init__(self, app: Any, allowed: list[str]) -> None:
        self.app = app
        self.any = "*" in allowed
        self.allowed = frozenset(a.lower().strip("[]") for a in allowed)

    def ok(self, host: str) -> bool:
        name = host_name(host)
        return bool(name) and (self.any or name in self.allowed)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self.any:
            host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
            if not self.ok(host):
                await _reply(send, 400, f"Host header {host!r} is not allowed; add it to "
                             "server.allowed_hosts if this daemon should answer to it",
                             "Host", "host_not_allowed")
                return
        await self.app(scope, receive, send)


class BearerToken:
    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") not in OPEN_PATHS:
            got = dict(scope.get("headers", [])).get(b"authorization", b"")
            if not hmac.compare_digest(got, self.expected):
                await _reply(send, 401, "missing or wrong bearer token; send "
                             "'Authorization: Bearer <token>'", "Authorization",
                             "invalid_api_key", [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)


def read_token(path: Path) -> str:
    """The API token from its file (or systemd credential); never from argv."""
    from cloud_bridge.credentials import key_file_path

    real = key_file_path(path, os.environ)
    try:
        token = real.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read server.api_token_file {real}: {exc.strerror}") from exc
    if len(token) < 16:
        raise ConfigError(f"token in {real} is shorter than 16 characters; use a longer one")
    return token


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token_configured: bool) -> None:
    if not is_loopback(host) and not token_configured:
        raise ConfigError(
            f"refusing to bind {host!r} beyond loopback without server.api_token_file; "
            "set EDGEROUTE_SERVER__API_TOKEN_FILE or bind 127.0.0.1"
        )
