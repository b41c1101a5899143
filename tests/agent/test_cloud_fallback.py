"""Cloud experts in the daemon: declared as an env JSON list, answered by the real
OpenAI-compatible server, and offline-first: every fault of the fault proxy ends in the
local expert's answer (or a 503 when fallback is off), within the deadline."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_bridge.usage import TokenUsage
from cloud_bridge.wire import SamplingParams
from tests.agent.conftest import share_local_expert
from tests.cloud_bridge.conftest import fault_proxy  # noqa: F401  (fixture)
from tests.cloud_bridge.faultproxy import Fault, FaultProxy

pytestmark = pytest.mark.anyio
SECRET = "sk-edgeroute-test-9d2f7e1b"
ASK = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8,
       "temperature": 0.0, "seed": 1}
DEADLINE_S = 2.0
LOCAL_SLACK_S = 20.0  # the local answer after the fallback, on a shared 2-core machine


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _cloud(base_url: str, key_file: Path, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "cloud", "base_url": base_url, "model": "smollm2-cloud",
        "api_key_file": str(key_file), "input_usd_per_mtok": 2.5, "output_usd_per_mtok": 10,
        "connect_timeout_s": 0.5, "first_token_timeout_s": 1.0, "read_timeout_s": 1.0,
        "deadline_s": DEADLINE_S, "max_retries": 1, "retry_backoff_base_s": 0.05,
        "retry_backoff_cap_s": 0.1,
    }
    return cfg | over


@pytest.fixture(scope="module")
def _shared_local(smollm_gguf: Path) -> Iterator[Any]:
    """One loaded local model for the module: its first answer is the slow one."""
    from agent.expert_settings import LocalExpertSettings
    from agent.experts.local import LocalExpert

    expert = LocalExpert.load(
        LocalExpertSettings(name="local", model=str(smollm_gguf), n_threads=1, n_ctx=512),
        smollm_gguf,
    )
    yield expert
    expert.close()  # the batch engine, then the model


@pytest.fixture(autouse=True)
def _reuse_local(monkeypatch: pytest.MonkeyPatch, _shared_local: Any) -> None:
    """build_runtime stays real; only its local model load is shared across tests."""
    share_local_expert(monkeypatch, _shared_local)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "cloud.key"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


def _env(monkeypatch: pytest.MonkeyPatch, gguf: Path, cloud: dict[str, Any],
         default_expert: str | None = None) -> None:
    monkeypatch.setenv("EDGEROUTE_LOCAL_EXPERTS", json.dumps(
        [{"name": "local", "model": str(gguf), "n_threads": 1, "n_ctx": 512}]))
    monkeypatch.setenv("EDGEROUTE_CLOUD_EXPERTS", json.dumps([cloud]))
    monkeypatch.setenv("EDGEROUTE_ROUTER__BUNDLE", "none")
    if default_expert:
        monkeypatch.setenv("EDGEROUTE_ROUTER__DEFAULT_EXPERT", default_expert)


@asynccontextmanager
async def _daemon() -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The real app in-process (settings from the environment), lifespan included."""
    from agent.app import create_app
    from agent.runtime import build_runtime
    from agent.settings import Settings

    settings = Settings()
    runtime = build_runtime(settings)
    app = create_app(settings, runtime)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1", timeout=120
    ) as client:
        yield client, runtime


def _sse(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


async def test_env_declared_cloud_expert_answers_through_the_daemon(
    monkeypatch: pytest.MonkeyPatch, smollm_gguf: Path, key_file: Path,
    fault_proxy: FaultProxy, caplog: pytest.LogCaptureFixture,  # noqa: F811
) -> None:
    caplog.set_level(logging.DEBUG)
    _env(monkeypatch, smollm_gguf, _cloud(fault_proxy.base_url(), key_file, deadline_s=60,
                                          first_token_timeout_s=30, read_timeout_s=30))
    from agent.settings import Settings

    cfg = Settings().cloud_experts[0]
    assert (cfg.name, cfg.input_usd_per_mtok, cfg.output_usd_per_mtok) == ("cloud", 2.5, 10)
    async with _daemon() as (client, runtime):
        models = (await client.get("/v1/models")).json()
        assert "cloud" in {m["id"] for m in models["data"]}
        r = await client.post("/v1/chat/completions", json=ASK | {"model": "cloud"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["expert"] == "cloud" and body["routing"]["fallback_from"] is None
        assert body["choices"][0]["message"]["content"]
        assert body["usage"]["completion_tokens"] > 0
        info = runtime.experts["cloud"].info
        assert info.prices.cost_usd(TokenUsage(1000, 100)) == pytest.approx(0.0035)
        s = await client.post("/v1/chat/completions", json=ASK | {"model": "cloud",
                                                                  "stream": True})
        events = _sse(s.text)
        assert events[-1] == "[DONE]" and json.loads(events[0])["expert"] == "cloud"
    assert fault_proxy.request_heads  # one kept-alive connection carries both requests
    assert all(SECRET.lower().encode() in h.lower() for h in fault_proxy.request_heads)
    assert SECRET not in caplog.text


FAULTS = [Fault.SILENCE, Fault.RESET_MID_BODY, Fault.SLOW_DRIP, Fault.STATUS_429,
          Fault.STATUS_500, None]  # None: connection refused


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.value if f else "refused")
async def test_each_fault_falls_back_to_the_local_expert(
    monkeypatch: pytest.MonkeyPatch, smollm_gguf: Path, key_file: Path,
    fault_proxy: FaultProxy, fault: Fault | None,  # noqa: F811
) -> None:
    fault_proxy.options.retry_after = "30"  # longer than the deadline: no point waiting
    if fault is None:
        fault_proxy.refuse()
    else:
        fault_proxy.set_plan([], default=fault)
    # The router's default is the cloud expert: 'auto' picks it, the fault moves it local.
    _env(monkeypatch, smollm_gguf, _cloud(fault_proxy.base_url(), key_file), "cloud")
    async with _daemon() as (client, _):
        t = time.monotonic()
        r = await client.post("/v1/chat/completions", json=ASK | {"model": "auto"})
        elapsed = time.monotonic() - t
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["expert"] == "local" and body["choices"][0]["message"]["content"]
    assert body["routing"]["fallback_from"] == "cloud"
    assert body["routing"]["reason"].startswith("fallback: ")
    assert elapsed < DEADLINE_S + LOCAL_SLACK_S


async def test_stream_falls_back_before_the_first_byte(
    monkeypatch: pytest.MonkeyPatch, smollm_gguf: Path, key_file: Path,
    fault_proxy: FaultProxy,  # noqa: F811
) -> None:
    fault_proxy.set_plan([], default=Fault.STATUS_500)
    _env(monkeypatch, smollm_gguf, _cloud(fault_proxy.base_url(), key_file))
    async with _daemon() as (client, _):
        r = await client.post("/v1/chat/completions", json=ASK | {"model": "cloud",
                                                                  "stream": True})
    events = _sse(r.text)
    first = json.loads(events[0])
    assert first["expert"] == "local" and first["routing"]["fallback_from"] == "cloud"
    assert "HTTP 500" in first["routing"]["reason"]
    assert events[-1] == "[DONE]"


async def test_mid_stream_failure_ends_in_band_and_counts_partial_usage(
    monkeypatch: pytest.MonkeyPatch, smollm_gguf: Path, key_file: Path,
    fault_proxy: FaultProxy,  # noqa: F811
) -> None:
    from agent.experts.cloud import CloudCallError

    fault_proxy.options.reset_after_body_bytes = 700  # a few deltas pass, then RST
    fault_proxy.set_plan([], default=Fault.RESET_MID_BODY)
    _env(monkeypatch, smollm_gguf, _cloud(fault_proxy.base_url(), key_file, deadline_s=60,
                                          first_token_timeout_s=30, read_timeout_s=30,
                                          breaker_failure_threshold=10))
    ask = ASK | {"model": "cloud", "stream": True, "max_tokens": 24}
    async with _daemon() as (client, runtime):
        r = await client.post("/v1/chat/completions", json=ask)
        events = _sse(r.text)
        assert "[DONE]" not in events
        assert json.loads(events[-1])["error"]["code"] == "expert_failed"
        assert any(json.loads(e).get("choices", [{}])[0].get("delta", {}).get("content")
                   for e in events[:-1])
        # The same failure seen by the runtime: partial, with the usage consumed so far.
        decision = runtime.decide("cloud", ask["messages"], SamplingParams(max_tokens=24))
        got = []
        with pytest.raises(CloudCallError) as info:
            async for delta, _ in runtime.stream(decision, ask["messages"],
                                                 SamplingParams(max_tokens=24,
                                                                  temperature=0.0)):
                got.append(delta.content)
    err = info.value
    assert got and err.partial and isinstance(err.usage, TokenUsage)
    assert err.usage.completion_tokens == len(got) and err.usage.prompt_tokens > 0


async def test_fallback_off_is_a_503(
    monkeypatch: pytest.MonkeyPatch, smollm_gguf: Path, key_file: Path,
    fault_proxy: FaultProxy,  # noqa: F811
) -> None:
    fault_proxy.refuse()
    _env(monkeypatch, smollm_gguf,
         _cloud(fault_proxy.base_url(), key_file, fallback_to_local=False,
                breaker_failure_threshold=1, breaker_cooldown_s=60))
    async with _daemon() as (client, _):
        r = await client.post("/v1/chat/completions", json=ASK | {"model": "cloud"})
        again = await client.post("/v1/chat/completions", json=ASK | {"model": "cloud"})
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert "fallback_to_local is off" in err["message"] and "cannot connect" in err["message"]
    assert SECRET not in r.text
    # Breaker now open: still a 503 (not a silent local answer), with a Retry-After.
    assert again.status_code == 503 and "circuit open" in again.json()["error"]["message"]
    assert 0 < int(again.headers["retry-after"]) <= 60


async def test_fallback_off_stream_is_a_503_not_a_cut_off_stream(
    monkeypatch: pytest.MonkeyPatch, smollm_gguf: Path, key_file: Path,
    fault_proxy: FaultProxy,  # noqa: F811
) -> None:
    """A failure before the first byte is a real status code even when streaming."""
    fault_proxy.refuse()
    _env(monkeypatch, smollm_gguf,
         _cloud(fault_proxy.base_url(), key_file, fallback_to_local=False))
    async with _daemon() as (client, _):
        r = await client.post("/v1/chat/completions",
                              json=ASK | {"model": "cloud", "stream": True})
    assert r.status_code == 503, r.text
    assert "fallback_to_local is off" in r.json()["error"]["message"]


async def test_open_breaker_skips_the_cloud_without_a_call(
    monkeypatch: pytest.MonkeyPatch, smollm_gguf: Path, key_file: Path,
    fault_proxy: FaultProxy,  # noqa: F811
) -> None:
    fault_proxy.set_plan([], default=Fault.STATUS_500)
    _env(monkeypatch, smollm_gguf, _cloud(fault_proxy.base_url(), key_file, max_retries=0,
                                          breaker_failure_threshold=1,
                                          breaker_cooldown_s=60))
    async with _daemon() as (client, runtime):
        first = await client.post("/v1/chat/completions", json=ASK | {"model": "cloud"})
        assert first.json()["expert"] == "local"
        assert runtime.experts["cloud"].available() is False
        second = await client.post("/v1/chat/completions", json=ASK | {"model": "cloud"})
    assert second.status_code == 200 and second.json()["expert"] == "local"
    assert second.json()["routing"]["fallback_from"] == "cloud"
    assert fault_proxy.applied == [Fault.STATUS_500]  # the second request never left
