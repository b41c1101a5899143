"""The bridge through a fault proxy in front of the real server: each fault ends in an
answer (after a retry) or a clear error, within the configured deadline; none hangs."""

from __future__ import annotations

import time

import pytest

from cloud_bridge.breaker import BreakerPolicy
from cloud_bridge.client import BridgeClient, Endpoint
from cloud_bridge.errors import (
    CallError,
    CircuitOpenError,
    ConnectFailed,
    DeadlineExceeded,
    FirstByteTimeout,
    FirstTokenTimeout,
    StreamBroken,
    UpstreamStatusError,
)
from cloud_bridge.retry import RetryPolicy
from cloud_bridge.timeouts import Timeouts
from cloud_bridge.wire import SamplingParams
from tests.cloud_bridge.faultproxy import Fault, FaultProxy

pytestmark = pytest.mark.anyio
MESSAGES = [{"role": "user", "content": "Say hello."}]
PARAMS = SamplingParams(max_tokens=8, temperature=0.0, seed=1)
SLACK_S = 1.0  # scheduling slack on a busy 2-core machine


def _client(proxy: FaultProxy, *, deadline: float = 60.0, first_byte: float = 30.0,
            retries: int = 2, threshold: int = 5) -> BridgeClient:
    """Generous defaults where the real server must answer (a loaded 2-core machine);
    tests of timeouts pass tight ones."""
    return BridgeClient(Endpoint(
        name="cloud", base_url=proxy.base_url(), model="smollm2-cloud",
        timeouts=Timeouts(connect_s=1.0, read_s=min(first_byte, 30.0), first_token_s=first_byte,
                          first_byte_s=first_byte, deadline_s=deadline),
        retry=RetryPolicy(max_retries=retries, base_s=0.05, cap_s=0.2),
        breaker=BreakerPolicy(failure_threshold=threshold, cooldown_s=30.0),
    ))


async def _complete_err(client: BridgeClient) -> tuple[CallError, float]:
    t = time.monotonic()
    try:
        with pytest.raises(CallError) as info:
            await client.complete(MESSAGES, PARAMS)
    finally:
        await client.aclose()
    return info.value, time.monotonic() - t


async def test_connection_refused_fails_fast_after_retries(fault_proxy: FaultProxy) -> None:
    fault_proxy.refuse()
    err, elapsed = await _complete_err(_client(fault_proxy, deadline=5.0, first_byte=2.0))
    assert isinstance(err, ConnectFailed) and "cannot connect" in str(err)
    assert elapsed < 1.0 + SLACK_S  # three attempts, backoff capped at 0.2 s


async def test_accept_then_silence_ends_at_the_first_token_budget(
    fault_proxy: FaultProxy,
) -> None:
    """The first-token budget covers every attempt: a silent peer costs it once, not once
    per retry, so the daemon can fall back within its offline budget."""
    fault_proxy.set_plan([], default=Fault.SILENCE)
    err, elapsed = await _complete_err(_client(fault_proxy, deadline=5.0, first_byte=1.0))
    assert isinstance(err, FirstTokenTimeout), err
    assert 0.9 < elapsed < 1.0 + SLACK_S
    assert fault_proxy.applied == [Fault.SILENCE]


async def test_silence_with_streaming_off_is_a_first_byte_timeout(
    fault_proxy: FaultProxy,
) -> None:
    fault_proxy.set_plan([], default=Fault.SILENCE)
    client = BridgeClient(Endpoint(
        name="cloud", base_url=fault_proxy.base_url(), model="smollm2-cloud", streams=False,
        timeouts=Timeouts(connect_s=1.0, first_byte_s=0.5, deadline_s=2.5),
        retry=RetryPolicy(max_retries=2, base_s=0.05, cap_s=0.2)))
    err, elapsed = await _complete_err(client)
    assert isinstance(err, FirstByteTimeout | DeadlineExceeded), err
    assert elapsed < 2.5 + SLACK_S
    assert len(fault_proxy.applied) >= 2  # first-byte timeouts are retried in the deadline


async def test_reset_mid_body_is_retried_then_answers(fault_proxy: FaultProxy) -> None:
    fault_proxy.set_plan([Fault.RESET_MID_BODY])
    client = _client(fault_proxy)
    try:
        result = await client.complete(MESSAGES, PARAMS)
    finally:
        await client.aclose()
    assert result.content and result.attempts == 2
    assert fault_proxy.applied[:2] == [Fault.RESET_MID_BODY, Fault.PASS]


async def test_reset_mid_stream_is_partial_never_retried(fault_proxy: FaultProxy) -> None:
    fault_proxy.options.reset_after_body_bytes = 700  # a few SSE events get through
    fault_proxy.set_plan([Fault.RESET_MID_BODY])
    client = _client(fault_proxy)
    got: list[str] = []
    try:
        with pytest.raises(StreamBroken) as info:
            async for piece in client.stream(MESSAGES, SamplingParams(max_tokens=24,
                                                                      temperature=0.0)):
                got.append(piece.content)
    finally:
        await client.aclose()
    err = info.value
    assert got and err.partial and fault_proxy.applied == [Fault.RESET_MID_BODY]
    assert err.usage is not None and err.usage.completion_tokens == len(got)
    assert err.usage.estimated and err.usage.prompt_tokens > 0


async def test_slow_drip_is_cut_at_the_deadline(fault_proxy: FaultProxy) -> None:
    fault_proxy.set_plan([], default=Fault.SLOW_DRIP)
    err, elapsed = await _complete_err(_client(fault_proxy, deadline=1.5, first_byte=5.0))
    assert isinstance(err, DeadlineExceeded) and "deadline of 1.5s" in str(err)
    assert 1.4 < elapsed < 1.5 + SLACK_S


async def test_429_retry_after_is_honoured(fault_proxy: FaultProxy) -> None:
    """The 429 is synthesized by the proxy (llama.cpp cannot rate-limit on demand)."""
    fault_proxy.options.retry_after = "1"
    fault_proxy.set_plan([Fault.STATUS_429])
    client = _client(fault_proxy)
    t = time.monotonic()
    try:
        result = await client.complete(MESSAGES, PARAMS)
    finally:
        await client.aclose()
    assert result.content and result.attempts == 2
    assert time.monotonic() - t >= 1.0  # waited as asked, not the 0.2 s backoff cap


async def test_429_retry_after_beyond_deadline_fails_now(fault_proxy: FaultProxy) -> None:
    fault_proxy.options.retry_after = "30"
    fault_proxy.set_plan([], default=Fault.STATUS_429)
    err, elapsed = await _complete_err(_client(fault_proxy, deadline=5.0, first_byte=4.0))
    assert isinstance(err, UpstreamStatusError) and err.status == 429
    assert err.retry_after_s == 30.0 and "rate limited" in str(err)
    assert elapsed < SLACK_S and fault_proxy.applied == [Fault.STATUS_429]


async def test_the_same_500_on_a_retry_is_the_requests_answer(fault_proxy: FaultProxy) -> None:
    """The 500 is synthesized by the proxy, the same body each time: retried once, then
    taken as the peer's answer to this request (no third try, no mark on the breaker)."""
    fault_proxy.set_plan([], default=Fault.STATUS_500)
    client = _client(fault_proxy, retries=2, threshold=1)
    err, elapsed = await _complete_err(client)
    assert isinstance(err, UpstreamStatusError) and err.status == 500
    assert err.request_shaped and not err.retryable
    assert fault_proxy.applied == [Fault.STATUS_500] * 2 and elapsed < 1.0 + SLACK_S
    assert client.breaker.state == "closed"


async def test_a_500_then_another_answer_is_retried_and_counts(fault_proxy: FaultProxy) -> None:
    """Answers that differ say the peer is in trouble: every retry is used, and the
    failed call opens the breaker."""
    fault_proxy.set_plan([Fault.STATUS_500, Fault.STATUS_503, Fault.STATUS_500])
    client = _client(fault_proxy, retries=2, threshold=1)
    err, _ = await _complete_err(client)
    assert isinstance(err, UpstreamStatusError) and not err.request_shaped
    assert fault_proxy.applied == [Fault.STATUS_500, Fault.STATUS_503, Fault.STATUS_500]
    assert client.breaker.state == "open"


async def test_the_same_503_every_time_is_an_outage(fault_proxy: FaultProxy) -> None:
    """503 speaks of the peer, whatever its body: all retries, then the breaker opens."""
    fault_proxy.set_plan([], default=Fault.STATUS_503)
    client = _client(fault_proxy, retries=2, threshold=1)
    err, _ = await _complete_err(client)
    assert isinstance(err, UpstreamStatusError) and err.status == 503
    assert not err.request_shaped and fault_proxy.applied == [Fault.STATUS_503] * 3
    assert client.breaker.state == "open"


async def test_breaker_opens_and_refuses_without_connecting(fault_proxy: FaultProxy) -> None:
    fault_proxy.set_plan([], default=Fault.STATUS_500)
    client = _client(fault_proxy, retries=0, threshold=2)
    try:
        for _ in range(2):
            with pytest.raises(UpstreamStatusError):
                await client.complete(MESSAGES, PARAMS)
        assert client.breaker.state == "open"
        with pytest.raises(CircuitOpenError):
            await client.complete(MESSAGES, PARAMS)
        with pytest.raises(CircuitOpenError):
            async for _ in client.stream(MESSAGES, PARAMS):
                pass
    finally:
        await client.aclose()
    assert len(fault_proxy.applied) == 2
