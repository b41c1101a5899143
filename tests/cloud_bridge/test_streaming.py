"""Every call streams from the peer: a plain call gathers the deltas (usage included), a
stall is caught between tokens, the first-token budget bounds the wait for a silent peer
(retries included), and a peer that cannot stream gets plain calls.

The peer is FakeStreamServer, a fake: a real llama.cpp server cannot be told to stream at
a chosen pace or to go silent after a few tokens.
"""

from __future__ import annotations

import time

import pytest

from cloud_bridge.breaker import BreakerPolicy
from cloud_bridge.client import BridgeClient, Endpoint
from cloud_bridge.errors import FirstTokenTimeout, ReadTimeout
from cloud_bridge.retry import RetryPolicy
from cloud_bridge.timeouts import Timeouts
from cloud_bridge.wire import SamplingParams
from tests.cloud_bridge.fakestream import FakeStreamOptions, FakeStreamServer

pytestmark = pytest.mark.anyio
MESSAGES = [{"role": "user", "content": "Count."}]
PARAMS = SamplingParams(max_tokens=64, temperature=0.0)
SLACK_S = 1.0


def _client(fake: FakeStreamServer, *, streams: bool = True, **timeouts: float) -> BridgeClient:
    return BridgeClient(Endpoint(
        name="fake", base_url=fake.base_url(), model="m", streams=streams,
        timeouts=Timeouts(**timeouts),
        retry=RetryPolicy(max_retries=2, base_s=0.05, cap_s=0.1),
        breaker=BreakerPolicy(failure_threshold=5),
    ))


def test_default_timeouts_fit_the_offline_budget() -> None:
    t = Timeouts()
    assert t.first_token_s <= 6 and t.read_s <= 5  # a stall is seen in seconds
    assert t.deadline_s >= 120  # a long answer that keeps streaming is not cut


async def test_plain_call_streams_and_gathers_content_and_usage() -> None:
    with FakeStreamServer(FakeStreamOptions(tokens=5, interval_s=0.02)) as fake:
        client = _client(fake)
        try:
            result = await client.complete(MESSAGES, PARAMS)
        finally:
            await client.aclose()
    assert result.content == " t0 t1 t2 t3 t4" and result.finish_reason == "stop"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (7, 5)
    assert not result.usage.estimated and result.attempts == 1
    assert fake.requests[0]["stream"] is True
    assert fake.requests[0]["stream_options"] == {"include_usage": True}


async def test_steady_stream_longer_than_the_stall_limit_is_not_cut() -> None:
    with FakeStreamServer(FakeStreamOptions(tokens=12, interval_s=0.2)) as fake:
        client = _client(fake, first_token_s=1.0, read_s=0.6)
        t = time.monotonic()
        try:
            result = await client.complete(MESSAGES, PARAMS)
        finally:
            await client.aclose()
    assert time.monotonic() - t > 4 * 0.6  # far longer than one stall limit
    assert result.usage.completion_tokens == 12


async def test_stall_between_tokens_is_a_read_timeout_and_partial() -> None:
    with FakeStreamServer(FakeStreamOptions(tokens=10, interval_s=0.05,
                                            stall_after=3)) as fake:
        client = _client(fake, read_s=0.5)
        got: list[str] = []
        t = time.monotonic()
        try:
            with pytest.raises(ReadTimeout, match="stalled") as info:
                async for piece in client.stream(MESSAGES, PARAMS):
                    got.append(piece.content)
        finally:
            await client.aclose()
    assert got == [" t0", " t1", " t2"] and info.value.partial
    assert time.monotonic() - t < 0.5 + 3 * 0.05 + SLACK_S
    assert info.value.usage is not None and info.value.usage.completion_tokens == 3
    assert len(fake.requests) == 1  # never retried once tokens reached the caller


async def test_silent_peer_ends_at_the_first_token_budget_retries_included() -> None:
    with FakeStreamServer(FakeStreamOptions(tokens=10, stall_after=0)) as fake:
        client = _client(fake, first_token_s=1.0)
        t = time.monotonic()
        try:
            with pytest.raises(FirstTokenTimeout, match="first_token_timeout 1.0s"):
                await client.complete(MESSAGES, PARAMS)
        finally:
            await client.aclose()
    assert 0.9 < time.monotonic() - t < 1.0 + SLACK_S


async def test_endpoint_that_cannot_stream_gets_plain_calls() -> None:
    with FakeStreamServer(FakeStreamOptions(tokens=3, interval_s=0.02)) as fake:
        client = _client(fake, streams=False)
        try:
            result = await client.complete(MESSAGES, PARAMS)
            pieces = [p async for p in client.stream(MESSAGES, PARAMS)]
        finally:
            await client.aclose()
    assert result.content == " t0 t1 t2" and result.usage.completion_tokens == 3
    assert [p.content for p in pieces] == [" t0 t1 t2", ""]
    assert pieces[-1].usage is not None and pieces[-1].finish_reason == "stop"
    assert [r["stream"] for r in fake.requests] == [False, False]
