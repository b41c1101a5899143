"""Headless Chromium for the dashboard tests: Debian's ``chromium`` driven by Playwright
(its own browser download cannot run here; ``make test`` installs the package), and a
second tiny HTTP server on another loopback port: a page of another origin."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CHROMIUM = Path(os.environ.get("EDGEROUTE_TEST_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-dev-shm-usage"]


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """A fresh headless browser context (its own user-data dir); yields the context."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `make test` installs Debian's chromium "
                           "(apt-get install chromium), or set EDGEROUTE_TEST_CHROMIUM")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=ARGS,
            viewport={"width": 1440, "height": 1000})
        try:
            yield ctx
        finally:
            ctx.close()


@dataclass
class Recorder:
    """Outermost ASGI app around the daemon: what reached it, from which Origin, and what
    it answered (a test instrument: nothing is changed)."""

    app: Any
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        entry: dict[str, Any] = {"method": scope["method"], "path": scope["path"],
                                 "origin": headers.get(b"origin", b"").decode() or None,
                                 "type": headers.get(b"content-type", b"").decode(),
                                 "status": None}
        self.seen.append(entry)

        async def record(message: Any) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            await send(message)

        await self.app(scope, receive, record)


@contextmanager
def page_server(html: str, port: int) -> Iterator[str]:
    """Serves ``html`` at ``/`` of http://127.0.0.1:<port>; yields the origin."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
