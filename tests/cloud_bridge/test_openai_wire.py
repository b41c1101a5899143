"""OpenAI's wire format where peers differ: content parts, the ``developer`` role, errors
that are about the request, and logprobs passed through. Against llama-cpp-python's own
server on loopback (it refuses ``developer`` with a 500 whose body is pydantic's
validation errors, and answers logprobs when started with ``logits_all``)."""

from __future__ import annotations

import pytest

from cloud_bridge.client import BridgeClient, Endpoint, counts_against_peer
from cloud_bridge.errors import UpstreamStatusError
from cloud_bridge.messages import first_media, map_roles, media_bytes, message_text
from cloud_bridge.retry import RetryPolicy
from cloud_bridge.timeouts import Timeouts
from cloud_bridge.wire import (
    SamplingParams,
    merge_logprobs,
    parse_chunk_piece,
    parse_completion_message,
    validation_error_body,
)

PARAMS = SamplingParams(max_tokens=4, temperature=0.0, seed=1)
DEVELOPER = [{"role": "developer", "content": "Answer in one word."},
             {"role": "user", "content": "Name one primary colour."}]


def _client(base_url: str, **kw: object) -> BridgeClient:
    timeouts = Timeouts(first_token_s=60.0, first_byte_s=60.0, read_s=60.0, deadline_s=120.0)
    return BridgeClient(Endpoint(name="peer", base_url=base_url, model="smollm2-cloud",
                                 timeouts=timeouts, retry=RetryPolicy(2, 0.05, 0.2),
                                 **kw))  # type: ignore[arg-type]


# -- messages: the pure helpers --------------------------------------------------------
def test_text_of_a_message_is_its_string_or_its_text_parts_joined() -> None:
    parts = [{"type": "text", "text": "Say"}, {"type": "image_url", "image_url": {"url": "u"}},
             {"type": "refusal", "refusal": "no"}, {"type": "text", "text": "hi."}]
    assert message_text({"role": "user", "content": parts}) == "Say\nno\nhi."
    assert message_text({"role": "user", "content": "plain"}) == "plain"
    assert message_text({"role": "assistant", "content": None}) == ""
    assert media_bytes({"content": parts}) == len(
        '[{"type": "image_url", "image_url": {"url": "u"}}]')
    assert media_bytes({"content": "plain"}) == 0


def test_first_media_names_the_first_message_per_modality() -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}
    image = {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
    messages = [{"role": "user", "content": "hi"}, {"role": "user", "content": [audio]},
                {"role": "user", "content": [image, audio]}]
    assert first_media(messages) == {"audio": 1, "image": 2}
    assert first_media(messages[:1]) == {}


def test_developer_becomes_system_unless_the_endpoint_takes_it() -> None:
    mapped = map_roles(DEVELOPER, developer=False)
    assert [m["role"] for m in mapped] == ["system", "user"]
    assert mapped[0]["content"] == DEVELOPER[0]["content"]
    assert DEVELOPER[0]["role"] == "developer"  # the caller's list is left alone
    assert map_roles(DEVELOPER, developer=True) is DEVELOPER


# -- logprobs in the peer's answers ------------------------------------------------------
TOKEN = {"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": []}


def test_logprobs_are_parsed_from_answers_and_chunks_and_merged_in_order() -> None:
    body = ('{"choices":[{"message":{"content":"Hi"},"finish_reason":"stop","logprobs":'
            '{"content":[{"token":"Hi","logprob":-0.5,"bytes":[72,105],"top_logprobs":[]}],'
            '"refusal":null}}]}')
    assert parse_completion_message("x", body).logprobs == {"content": [TOKEN],
                                                           "refusal": None}
    chunk = ('{"choices":[{"delta":{"content":"Hi"},"finish_reason":null,"logprobs":'
             '{"content":[{"token":"Hi","logprob":-0.5,"bytes":[72,105],"top_logprobs":[]}]}}]}')
    assert parse_chunk_piece("x", chunk).logprobs == {"content": [TOKEN]}
    plain = '{"choices":[{"delta":{"content":"Hi"},"logprobs":null}]}'
    assert parse_chunk_piece("x", plain).logprobs is None
    second = {**TOKEN, "token": "!"}
    merged = merge_logprobs([{"content": [TOKEN]}, None, {"content": [second],
                                                          "refusal": None}])
    assert merged == {"content": [TOKEN, second], "refusal": None}
    assert merge_logprobs([None, None]) is None


@pytest.mark.anyio
@pytest.mark.parametrize("streams", [True, False], ids=["streamed", "plain"])
async def test_a_peers_logprobs_pass_through(logprobs_server: str, streams: bool) -> None:
    client = _client(logprobs_server, streams=streams)
    params = SamplingParams(max_tokens=3, temperature=0.0, seed=1, logprobs=True,
                            top_logprobs=2)
    try:
        answer = await client.complete([{"role": "user", "content": "Say hi."}], params)
        pieces = [p async for p in client.stream([{"role": "user", "content": "Say hi."}],
                                                 params)]
    finally:
        await client.aclose()
    assert answer.logprobs is not None
    tokens = answer.logprobs["content"]
    assert len(tokens) == answer.usage.completion_tokens == 3
    assert "".join(t["token"] for t in tokens) == answer.content
    assert all(t["logprob"] <= 0 and len(t["top_logprobs"]) >= 1 for t in tokens)
    streamed = merge_logprobs(p.logprobs for p in pieces)
    assert streamed is not None and [t["token"] for t in streamed["content"]] == [
        t["token"] for t in tokens]


# -- errors about the request ------------------------------------------------------------
def test_validation_bodies_are_recognised() -> None:
    assert validation_error_body('{"detail":[{"loc":["body","messages"],"msg":"x"}]}')
    assert validation_error_body("1 validation error for ChatCompletionRequest")
    assert validation_error_body('{"error":{"type":"invalid_request_error"}}')
    assert not validation_error_body('{"error":{"message":"CUDA out of memory"}}')
    assert not validation_error_body("<html>502 Bad Gateway</html>")


def test_availability_statuses_never_pass_for_the_requests_fault() -> None:
    for status in (502, 503, 504, 429, 408):
        err = UpstreamStatusError("x", status, "invalid_request_error", validation_body=True)
        assert not err.request_shaped and err.retryable and counts_against_peer(err)
    err = UpstreamStatusError("x", 500, "Input should be 'system'", validation_body=True)
    assert err.request_shaped and not err.retryable and not counts_against_peer(err)
    assert not counts_against_peer(UpstreamStatusError("x", 400, "bad"))
    assert counts_against_peer(UpstreamStatusError("x", 500, "crashed"))


@pytest.mark.anyio
@pytest.mark.parametrize("streams", [True, False], ids=["streamed", "plain"])
async def test_developer_is_sent_as_system_to_a_peer_that_refuses_it(
        cloud_server: str, streams: bool) -> None:
    client = _client(cloud_server, streams=streams)
    try:
        answer = await client.complete(DEVELOPER, PARAMS)
    finally:
        await client.aclose()
    assert answer.content.strip() and answer.attempts == 1


@pytest.mark.anyio
@pytest.mark.parametrize("streams", [True, False], ids=["streamed", "plain"])
async def test_a_validation_500_is_not_retried_and_leaves_the_breaker_closed(
        cloud_server: str, streams: bool) -> None:
    """Declared as taking ``developer``, the request reaches llama.cpp's server as sent:
    its 500 carries pydantic's errors, so it is the request's fault, not the peer's."""
    client = _client(cloud_server, streams=streams, developer_role=True)
    try:
        with pytest.raises(UpstreamStatusError) as info:
            await client.complete(DEVELOPER, PARAMS)
        assert client.breaker.state == "closed"
        again = await client.complete(DEVELOPER[1:], PARAMS)  # the peer is fine
    finally:
        await client.aclose()
    err = info.value
    assert err.status == 500 and "Input should be" in err.detail
    assert err.request_shaped and not err.retryable
    assert again.content.strip()
