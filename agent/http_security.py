"""ASGI guards in front of every route: Host allow-list (DNS rebinding), the Origin check
on state-changing requests (cross-site request forgery), and the optional bearer token.
Each answers with the OpenAI error body before any route runs.

``X-Forwarded-Host`` is never read: behind a proxy, configure the proxy's Host instead.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.errors import ConfigError, openai_error_body

OPEN_PATHS = frozenset({"/health"})
# Methods that change nothing (RFC 9110 "safe"); every other one must not come from a page
# of another origin.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int]  # scheme, host, port: what the browser's same-origin rule compares


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


def parse_origin(value: str) -> Origin | None:
    """An ``Origin`` header (or a configured origin) as (scheme, host, port), default ports
    filled in; None for an opaque origin (``null``: a sandboxed frame, a ``file:`` page)
    or anything that is not a bare http(s) origin."""
    value = value.strip().lower()
    if any(c in value for c in "@?#\\") or not value.startswith(("http://", "https://")):
        return None
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError:
        return None
    if not url.hostname or url.path not in ("", "/"):
        return None
    return url.scheme, url.hostname, port or DEFAULT_PORTS[url.scheme]


def own_origin(scheme: str, host: str) -> Origin | None:
    """The origin a request was made to: its scheme and its Host header (already checked
    against the allow-list). Browsers send the page's origin in ``Origin``: a page the
    daemon served sends exactly this."""
    return parse_origin(f"{scheme}://{host}") if "/" not in host else None


class OriginGuard:
    """Refuses (403) a state-changing request (any method but GET, HEAD, OPTIONS) whose
    ``Origin`` is not the daemon's own origin or one of ``server.cors_origins``.

    A web page on another origin can make the user's browser POST to the daemon on
    loopback (a form, a ``text/plain`` or ``no-cors`` fetch: no preflight, so CORS being
    off does not stop the request, only the page reading the answer). Browsers add
    ``Origin`` to every such request and pages cannot forge it, so this refuses them all
    before a route runs: no expert is called, no router reloaded. A request without
    ``Origin`` (curl, SDKs, ``edgeroute``) is not from a browser page and passes. ``*`` in
    ``cors_origins`` lets every origin in but the opaque ``null``."""

    def __init__(self, app: Any, allowed_origins: list[str]) -> None:
        self.app = app
        self.any = "*" in allowed_origins  # the user let every site in (CORS too)
        self.allowed = frozenset(o for o in map(parse_origin, allowed_origins) if o is not None)

    def ok(self, scope: Any, origins: list[str]) -> bool:
        if len(origins) != 1:
            return False  # two Origin headers: no browser sends that
        got = parse_origin(origins[0])
        if got is None:
            return False
        host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
        return (self.any or got in self.allowed
                or got == own_origin(scope.get("scheme", "http"), host))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method", "GET") not in SAFE_METHODS:
            origins = [v.decode("latin-1") for k, v in scope.get("headers", [])
                       if k == b"origin"]
            if origins and not self.ok(scope, origins):
                await _reply(send, 403, f"Origin {', '.join(origins)!r} may not change this "
                             "daemon's state: only pages of its own origin may; add the origin "
                             "to server.cors_origins to allow it", "Origin",
                             "origin_not_allowed")
                return
        await self.app(scope, receive, send)


class BearerToken:
    """``open_paths``: besides ``/health``, paths served without the token (the
    dashboard's static page: it holds no figures, and asks for the token itself)."""

    def __init__(self, app: Any, token: str, open_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.open = OPEN_PATHS | open_paths

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") not in self.open:
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
