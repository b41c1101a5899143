"""Offline-first with the DEFAULT settings (no tuned timeouts): a dead cloud expert hands
over to the local expert within 10 s, plain and streaming, and its open breaker makes the
next request skip it at once; a cloud answer that streams steadily for a minute is not
cut; overload is a fast 503 with Retry-After, charged to the expert that answers.

Real daemon (uvicorn on loopback), real local GGUF, real sockets: a closed port is
refused by the kernel; a black-holed port drops SYNs (a listener whose accept queue is
full, which Linux answers by dropping new SYNs), so connect hangs as it does behind a
dead route; a silent peer accepts, reads the request and never answers (captive portal,
hung proxy). Only the minute-long stream comes from a fake server (FakeStreamServer):
a real llama.cpp server cannot be made to stream for 60 s on demand.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent.conftest import running_daemon, share_local_expert
from tests.cloud_bridge.fakestream import FakeStreamOptions, FakeStreamServer
from tests.cloud_bridge.faultproxy import Fault, FaultProxy
from tests.conftest import MODEL_CACHE, free_port

ASK = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4,
       "temperature": 0.0, "seed": 1}
OFFLINE_BUDGET_S = 10.0
OPEN_BREAKER_S = 1.0


@pytest.fixture(scope="module")
def _shared_local(smollm_gguf: Path) -> Iterator[Any]:
    """One local model for the module, loaded with the default settings (threads too)."""
    from agent.expert_settings import LocalExpertSettings
    from agent.experts.local import LocalExpert

    expert = LocalExpert.load(LocalExpertSettings(name="local", model=str(smollm_gguf)),
                              smollm_gguf)
    yield expert
    expert.close()  # the batch engine, then the model


@pytest.fixture(autouse=True)
def _reuse_local(monkeypatch: pytest.MonkeyPatch, _shared_local: Any) -> None:
    """build_runtime stays real; only its local model load is shared across tests."""
    share_local_expert(monkeypatch, _shared_local)
    _shared_local._async_lock = None  # each daemon runs its own event loop


def _settings(tmp_path: Path, smollm_gguf: Path, cloud: dict[str, Any],
              server: dict[str, Any] | None = None, **top: Any) -> Any:
    """Default settings but for paths, port, and what the test is about."""
    from agent.settings import Settings

    return Settings(
        paths={"data_dir": tmp_path / "d", "cache_dir": MODEL_CACHE, "config_dir": tmp_path},
        server={"port": free_port(), **(server or {})},
        local_experts=[{"name": "local", "model": str(smollm_gguf)}],
        cloud_experts=[{"name": "cloud", "model": "gpt-x"} | cloud],
        router={"bundle": "none"},
        **top,
    )


@contextmanager
def black_hole() -> Iterator[int]:
    """A loopback port that drops SYNs: connect() hangs until the client gives up."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):  # fill the accept queue; later SYNs are dropped
        filler = socket.socket()
        filler.setblocking(False)
        with suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.2)
    try:
        yield port
    finally:
        for s in [*fillers, listener]:
            s.close()


@contextmanager
def closed_port() -> Iterator[int]:
    yield free_port()  # nothing listens: connections are refused


@contextmanager
def silent_peer() -> Iterator[int]:
    with FaultProxy(free_port()) as proxy:  # never forwards: SILENCE answers nothing
        proxy.set_plan([], default=Fault.SILENCE)
        yield proxy.port


def _ask(client: httpx.Client, url: str, stream: bool) -> tuple[float, dict[str, Any]]:
    """(seconds until the answer starts, first JSON object): the whole reply when plain,
    the first content chunk when streaming."""
    t = time.monotonic()
    if not stream:
        r = client.post(f"{url}/v1/chat/completions", json=ASK | {"model": "cloud"})
        assert r.status_code == 200, r.text
        return time.monotonic() - t, r.json()
    import json

    first: dict[str, Any] | None = None
    started = 0.0
    with client.stream("POST", f"{url}/v1/chat/completions",
                       json=ASK | {"model": "cloud", "stream": True}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if first is None:
                first = event  # carries expert and routing
            if event.get("choices") and event["choices"][0]["delta"].get("content"):
                started = started or time.monotonic() - t
    assert first is not None and started
    return started, first


DEAD = {"black-holed": black_hole, "closed": closed_port, "silent": silent_peer}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("dead", list(DEAD))
def test_dead_cloud_answers_locally_within_10s_then_at_once(
    tmp_path: Path, smollm_gguf: Path, dead: str, stream: bool
) -> None:
    with DEAD[dead]() as port:
        settings = _settings(tmp_path, smollm_gguf,
                             {"base_url": f"http://127.0.0.1:{port}/v1"})
        with running_daemon(settings) as url, httpx.Client(timeout=60) as client:
            first_s, first = _ask(client, url, stream)
            second_s, second = _ask(client, url, stream)
    print(f"{dead} {'stream' if stream else 'plain'}: local answer after {first_s:.2f} s, "
          f"then {second_s:.2f} s")
    for reply in (first, second):
        assert reply["expert"] == "local" and reply["routing"]["fallback_from"] == "cloud"
    assert first_s < OFFLINE_BUDGET_S, f"{dead}: local answer started after {first_s:.1f}s"
    assert "unavailable" in second["routing"]["rejected"]["cloud"]  # breaker: no call made
    assert second_s < OPEN_BREAKER_S, f"{dead}: second answer after {second_s:.2f}s"


@pytest.mark.slow
def test_a_steady_35s_cloud_stream_is_not_cut(tmp_path: Path, smollm_gguf: Path) -> None:
    """FakeStreamServer (a fake: llama.cpp cannot stream for a minute on demand) sends a
    token every 0.5 s for 35 s (past any 30 s timeout); the default stall (5 s) and
    deadline (300 s) let both a plain and a streaming request take the whole answer."""
    with FakeStreamServer(FakeStreamOptions(tokens=70, interval_s=0.5)) as fake:
        settings = _settings(tmp_path, smollm_gguf, {"base_url": fake.base_url()})

        async def both(url: str) -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=120) as client:
                return list(await asyncio.gather(*(
                    client.post(f"{url}/v1/chat/completions",
                                json=ASK | {"model": "cloud", "stream": s})
                    for s in (False, True))))

        with running_daemon(settings) as url:
            t = time.monotonic()
            plain, streamed = asyncio.run(both(url))
            elapsed = time.monotonic() - t
    assert elapsed >= 35
    assert plain.status_code == 200 and plain.json()["expert"] == "cloud"
    assert plain.json()["choices"][0]["message"]["content"].split() == [
        f"t{i}" for i in range(70)]
    assert plain.json()["usage"]["completion_tokens"] == 70
    assert all(r["stream"] is True for r in fake.requests)  # plain calls stream internally
    events = [ln[6:] for ln in streamed.text.splitlines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]" and '"error"' not in streamed.text
    assert sum('"content":" t' in e for e in events) == 70


@pytest.mark.parametrize("why", ["priced-out", "failing"])
def test_20_concurrent_requests_get_an_answer_or_a_fast_503(
    tmp_path: Path, smollm_gguf: Path, why: str
) -> None:
    """A local queue of 2: whether the budget routes the cloud expert's requests local
    (priced out) or each cloud call fails and falls back, the local expert's own queue
    admits them; the overflow is 503 with Retry-After at once, nobody hangs, and the
    ledger is unchanged."""
    from agent.ledger import Caps, Ledger

    with closed_port() as port:
        cloud: dict[str, Any] = {"base_url": f"http://127.0.0.1:{port}/v1",
                                 "input_usd_per_mtok": 5.0, "output_usd_per_mtok": 15.0}
        if why == "failing":
            cloud["breaker_failure_threshold"] = 1000  # every request tries, then falls back
        budget = {"daily_usd": 0.0} if why == "priced-out" else {}
        settings = _settings(tmp_path, smollm_gguf, cloud, {"max_queue_per_expert": 2},
                             budget=budget)
        ledger_path = settings.paths.data_dir / "ledger.sqlite3"

        async def fire(url: str) -> list[tuple[float, httpx.Response]]:
            async with httpx.AsyncClient(timeout=120) as client:
                async def one(i: int) -> tuple[float, httpx.Response]:
                    t = time.monotonic()
                    r = await client.post(f"{url}/v1/chat/completions",
                                          json=ASK | {"model": "cloud", "stream": i % 2 == 1})
                    return time.monotonic() - t, r
                return list(await asyncio.gather(*(one(i) for i in range(20))))

        with running_daemon(settings) as url:
            replies = asyncio.run(fire(url))
    codes = sorted(r.status_code for _, r in replies)
    assert set(codes) <= {200, 503}, codes
    assert 1 <= codes.count(200) <= 19 and codes.count(503) >= 1, codes
    assert max(s for s, _ in replies) < 60
    for _, r in replies:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) > 0
            assert r.json()["error"]["code"] == "expert_unavailable"
        else:
            assert '"expert":"local"' in r.text.replace(" ", "")
    ledger = Ledger(ledger_path, Caps())
    try:
        usage = ledger.usage()
        if why == "priced-out":
            assert usage["experts"] == {}  # unchanged: not even a reservation
        else:  # failed calls' reservations were released: nothing spent, nothing open
            assert usage["experts"]["cloud"] == {"day_usd": 0.0, "month_usd": 0.0,
                                                 "settled_calls": 0, "open_reservations": 0}
    finally:
        ledger.close()
