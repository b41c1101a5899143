"""The Origin guard (``agent.http_security.OriginGuard``): a state-changing request from a
page of another origin is refused before anything behind it runs; requests without an
``Origin`` (curl, SDKs) and the daemon's own pages pass. The browser test is
``tests/agent/test_dashboard.py``."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from agent.http_security import HostAllowList, OriginGuard, own_origin, parse_origin

HOSTS = ["127.0.0.1", "localhost", "::1"]


class Reached:
    """The innermost ASGI app: answers 200 and counts what got through the guard."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls.append((scope["method"], scope["path"]))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


def _client(reached: Reached, base: str = "http://127.0.0.1:2345",
            cors: list[str] | None = None) -> httpx.AsyncClient:
    app = HostAllowList(OriginGuard(reached, allowed_origins=cors or []), allowed=HOSTS)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)


@pytest.mark.parametrize(("value", "parsed"), [
    ("http://127.0.0.1:2345", ("http", "127.0.0.1", 2345)),
    ("HTTP://LocalHost", ("http", "localhost", 80)),
    ("https://app.example", ("https", "app.example", 443)),
    ("http://[::1]:8080", ("http", "::1", 8080)),
    ("https://app.example/", ("https", "app.example", 443)),
    ("null", None), ("", None), ("file://", None), ("chrome-extension://abc", None),
    ("http://evil@127.0.0.1:2345", None), ("http://127.0.0.1:2345/x", None),
    ("http://127.0.0.1:99999", None), ("http://", None), ("http://a?b", None),
])
def test_origins_parse_to_scheme_host_port(value: str, parsed: tuple | None) -> None:
    assert parse_origin(value) == parsed


def test_own_origin_is_the_scheme_and_host_the_request_was_made_to() -> None:
    assert own_origin("http", "127.0.0.1:2345") == ("http", "127.0.0.1", 2345)
    assert own_origin("http", "localhost") == ("http", "localhost", 80)
    assert own_origin("http", "[::1]:2345") == ("http", "::1", 2345)
    assert own_origin("http", "127.0.0.1:2345/evil") is None


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("origin", [
    "http://evil.example", "http://127.0.0.1:2346", "https://127.0.0.1:2345",
    "http://localhost:2345", "null", "http://127.0.0.1:2345.evil.example",
])
async def test_a_foreign_origin_cannot_change_state(method: str, origin: str) -> None:
    """Another site, another port, another scheme, another name for the same address, an
    opaque origin: all refused with the OpenAI error body, before the app runs."""
    reached = Reached()
    async with _client(reached) as c:
        r = await c.request(method, "/admin/router/reload", headers={"Origin": origin})
    assert r.status_code == 403
    err = r.json()["error"]
    assert err["code"] == "origin_not_allowed" and err["param"] == "Origin"
    assert "server.cors_origins" in err["message"]
    assert reached.calls == []


@pytest.mark.anyio
async def test_no_origin_and_the_daemons_own_origin_pass() -> None:
    reached = Reached()
    async with _client(reached) as c:
        assert (await c.post("/admin/router/reload")).status_code == 200  # curl, SDKs
        r = await c.post("/v1/chat/completions", headers={"Origin": "http://127.0.0.1:2345"})
        assert r.status_code == 200
        r = await c.post("/v1/route", headers={"Origin": "HTTP://127.0.0.1:2345/"})
        assert r.status_code == 200
    async with _client(reached, base="http://localhost") as c:
        assert (await c.post("/v1/route", headers={"Origin": "http://localhost"})
                ).status_code == 200
        assert (await c.post("/v1/route", headers={"Origin": "http://localhost:80"})
                ).status_code == 200
    async with _client(reached, base="http://[::1]:2345") as c:
        assert (await c.post("/v1/route", headers={"Origin": "http://[::1]:2345"})
                ).status_code == 200
    assert len(reached.calls) == 6


@pytest.mark.anyio
async def test_reads_pass_from_any_origin() -> None:
    """GET, HEAD and OPTIONS change nothing; CORS (off by default) keeps another page from
    reading the answer, and a CORS preflight must reach the CORS middleware."""
    reached = Reached()
    async with _client(reached) as c:
        for method in ("GET", "HEAD", "OPTIONS"):
            r = await c.request(method, "/v1/dashboard", headers={"Origin": "http://evil.example"})
            assert r.status_code == 200
    assert [m for m, _ in reached.calls] == ["GET", "HEAD", "OPTIONS"]


@pytest.mark.anyio
async def test_a_configured_cors_origin_may_change_state() -> None:
    reached = Reached()
    async with _client(reached, cors=["https://app.example", "null", "not a url"]) as c:
        ok = await c.post("/v1/chat/completions", headers={"Origin": "https://app.example:443"})
        assert ok.status_code == 200
        # "null" in the list never lets an opaque origin in (every sandbox sends it)
        assert (await c.post("/v1/route", headers={"Origin": "null"})).status_code == 403
        assert (await c.post("/v1/route", headers={"Origin": "https://other.example"})
                ).status_code == 403
    assert reached.calls == [("POST", "/v1/chat/completions")]


@pytest.mark.anyio
async def test_a_star_in_cors_origins_lets_every_site_in_but_opaque_origins() -> None:
    reached = Reached()
    async with _client(reached, cors=["*"]) as c:
        assert (await c.post("/v1/route", headers={"Origin": "https://any.example"})
                ).status_code == 200
        assert (await c.post("/v1/route", headers={"Origin": "null"})).status_code == 403
    assert len(reached.calls) == 1


@pytest.mark.anyio
async def test_two_origin_headers_are_refused() -> None:
    reached = Reached()
    async with _client(reached) as c:
        r = await c.post("/v1/route", headers=[("Origin", "http://127.0.0.1:2345"),
                                               ("Origin", "http://evil.example")])
    assert r.status_code == 403 and reached.calls == []


@pytest.mark.anyio
async def test_the_host_allow_list_still_runs_first() -> None:
    """DNS rebinding makes Origin and Host the attacker's name alike: the Host list
    refuses it before the Origin rule would call them the same origin."""
    reached = Reached()
    async with _client(reached) as c:
        r = await c.post("/admin/router/reload", headers={"Host": "evil.example",
                                                          "Origin": "http://evil.example"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "Host"
    assert reached.calls == []
