"""The bridge against a real OpenAI-compatible server (llama-cpp-python's, SmolLM2) on
loopback: plain and streaming answers, usage, cost, the key in the header and nowhere
else, and no redirect followed."""

from __future__ import annotations

import asyncio
import logging

import pytest
from pydantic import SecretStr

from cloud_bridge.client import BridgeClient, Endpoint
from cloud_bridge.errors import RedirectRefused
from cloud_bridge.timeouts import Timeouts
from cloud_bridge.usage import Prices, TokenUsage
from cloud_bridge.wire import SamplingParams, StreamPiece
from tests.cloud_bridge.faultproxy import Fault, FaultProxy, ProxyOptions, read_request

pytestmark = pytest.mark.anyio
MODEL = "smollm2-cloud"
MESSAGES = [{"role": "user", "content": "Name one primary colour."}]
PARAMS = SamplingParams(max_tokens=8, temperature=0.0, seed=1)
PRICES = Prices(input_usd_per_mtok=2.5, output_usd_per_mtok=10.0)
SECRET = "sk-test-DO-NOT-LOG-1f3a9c"


def _billed_by_hand(usage: TokenUsage) -> float:
    """What PRICES' published rates make of these token counts, worked out here (USD 2.50
    per million prompt tokens, USD 10 per million completion tokens, nothing read from the
    provider's cache), not through ``Prices``: a swapped rate, a per-1k slip or a cache
    discount where there was none shows as a different figure. Unequal counts, so a swap
    of the two rates cannot hide."""
    assert usage.cached_prompt_tokens == 0
    assert usage.prompt_tokens != usage.completion_tokens
    return usage.prompt_tokens * 2.5e-6 + usage.completion_tokens * 10e-6


def _endpoint(base_url: str, **kw: object) -> Endpoint:
    """Generous timeouts: the real server shares a loaded 2-core machine."""
    timeouts = Timeouts(first_token_s=60.0, first_byte_s=60.0, read_s=60.0, deadline_s=120.0)
    return Endpoint(name="smollm2-cloud", base_url=base_url, model=MODEL, prices=PRICES,
                    timeouts=timeouts, **kw)  # type: ignore[arg-type]


async def test_plain_completion_usage_and_cost(cloud_server: str) -> None:
    """With streaming off, a plain call; the peer's usage is billed as sent."""
    client = BridgeClient(_endpoint(cloud_server, streams=False))
    try:
        result = await client.complete(MESSAGES, PARAMS)
    finally:
        await client.aclose()
    assert result.content.strip()
    assert result.finish_reason in {"stop", "length"}
    assert not result.usage.estimated
    assert 0 < result.usage.completion_tokens <= PARAMS.max_tokens
    assert result.usage.prompt_tokens > 5
    assert result.cost_usd == pytest.approx(_billed_by_hand(result.usage))
    assert result.cost_usd > 0
    assert client.breaker.state == "closed"


async def test_plain_call_streams_and_counts_usage_the_peer_does_not_send(
    cloud_server: str,
) -> None:
    """llama-cpp-python's server ignores stream_options.include_usage: the gathered answer
    is the same as a plain call's, its usage counted and marked estimated."""
    plain_client = BridgeClient(_endpoint(cloud_server, streams=False))
    client = BridgeClient(_endpoint(cloud_server))
    try:
        plain = await plain_client.complete(MESSAGES, PARAMS)
        gathered = await client.complete(MESSAGES, PARAMS)
    finally:
        await plain_client.aclose()
        await client.aclose()
    assert gathered.content == plain.content and gathered.finish_reason == plain.finish_reason
    assert gathered.usage.estimated and not plain.usage.estimated
    assert gathered.usage.completion_tokens == plain.usage.completion_tokens
    assert gathered.cost_usd == pytest.approx(_billed_by_hand(gathered.usage))
    assert gathered.cost_usd > 0


async def test_streaming_matches_plain_and_ends_with_usage(cloud_server: str) -> None:
    client = BridgeClient(_endpoint(cloud_server))
    try:
        plain = await client.complete(MESSAGES, PARAMS)
        pieces: list[StreamPiece] = [p async for p in client.stream(MESSAGES, PARAMS)]
    finally:
        await client.aclose()
    *deltas, last = pieces
    assert deltas and all(p.content and p.usage is None for p in deltas)
    assert "".join(p.content for p in deltas) == plain.content  # temperature 0
    assert last.finish_reason == plain.finish_reason and last.usage is not None
    assert last.usage.completion_tokens == plain.usage.completion_tokens
    assert last.cost_usd == pytest.approx(_billed_by_hand(last.usage))
    assert last.cost_usd > 0


async def test_consumer_stopping_early_closes_cleanly(cloud_server: str) -> None:
    client = BridgeClient(_endpoint(cloud_server))
    try:
        async for _ in client.stream(MESSAGES, PARAMS):
            break
        assert client.breaker.state == "closed"
        again = await client.complete(MESSAGES, PARAMS)  # the pool is still usable
        assert again.content
    finally:
        await client.aclose()


async def test_key_is_sent_as_bearer_and_never_logged(
    fault_proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fault_proxy.set_plan([Fault.STATUS_500])  # one retry, so the retry log line is emitted
    client = BridgeClient(_endpoint(fault_proxy.base_url(), api_key=SecretStr(SECRET)))
    try:
        result = await client.complete(MESSAGES, PARAMS)
        pieces = [p async for p in client.stream(MESSAGES, PARAMS)]
    finally:
        await client.aclose()
    assert result.content and pieces
    assert all(f"authorization: bearer {SECRET}".lower().encode() in h.lower()
               for h in fault_proxy.request_heads)
    assert "retrying" in caplog.text  # the bridge did log
    assert SECRET not in caplog.text
    assert SECRET not in repr(client) and SECRET not in repr(client.endpoint)


async def test_redirect_is_not_followed_with_the_key(cloud_server: str) -> None:
    """The 307 is synthesized by the proxy; a second listener records any follower."""
    followed: list[bytes] = []

    async def capture(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        followed.append(head)
        writer.close()

    trap = await asyncio.start_server(capture, "127.0.0.1", 0)
    trap_port = trap.sockets[0].getsockname()[1]
    port = int(cloud_server.rsplit(":", 1)[1].split("/")[0])
    opts = ProxyOptions(redirect_to=f"http://127.0.0.1:{trap_port}/v1/chat/completions")
    with FaultProxy(port, opts) as proxy:
        proxy.set_plan([], default=Fault.REDIRECT)
        client = BridgeClient(_endpoint(proxy.base_url(), api_key=SecretStr(SECRET)))
        try:
            with pytest.raises(RedirectRefused, match="not followed") as info:
                await client.complete(MESSAGES, PARAMS)
        finally:
            await client.aclose()
        assert proxy.applied == [Fault.REDIRECT]  # not retried either
    trap.close()
    assert followed == []
    assert SECRET not in str(info.value)
