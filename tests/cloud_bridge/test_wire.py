from __future__ import annotations

import pytest

from cloud_bridge.errors import MalformedResponse, UpstreamStatusError
from cloud_bridge.sse import SSEDecoder
from cloud_bridge.usage import Prices, TokenUsage, counted_usage
from cloud_bridge.wire import error_detail, parse_chunk, parse_completion


def _events(text: str) -> list[str]:
    dec, out = SSEDecoder(), []
    for line in text.split("\n"):
        payload = dec.feed(line)
        if payload is not None:
            out.append(payload)
    return out


def test_sse_joins_data_lines_and_skips_comments_and_other_fields() -> None:
    text = ": keep-alive\n\nevent: x\ndata: a\ndata:b\nid: 3\n\ndata: [DONE]\n\n"
    assert _events(text) == ["a\nb", "[DONE]"]


def test_chunk_with_content_finish_and_usage_only_chunk() -> None:
    c = '{"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}'
    assert parse_chunk("x", c) == ("Hi", None, None)
    f = '{"choices":[{"delta":{},"finish_reason":"length"}]}'
    assert parse_chunk("x", f) == ("", "length", None)
    u = '{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}'
    assert parse_chunk("x", u) == ("", None, TokenUsage(7, 3))
    # OpenAI's (and llama-server's) count of prompt tokens read from a cache passes through
    c = ('{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,'
         '"prompt_tokens_details":{"cached_tokens":5}}}')
    assert parse_chunk("x", c) == ("", None, TokenUsage(7, 3, cached_prompt_tokens=5))


def test_in_band_error_and_junk_are_errors() -> None:
    with pytest.raises(UpstreamStatusError, match="overloaded"):
        parse_chunk("x", '{"error":{"message":"overloaded"}}')
    with pytest.raises(MalformedResponse, match="not JSON"):
        parse_chunk("x", "<html>")
    with pytest.raises(MalformedResponse, match="choices"):
        parse_completion("x", '{"choices":[]}')


def test_error_detail_prefers_openai_message() -> None:
    assert error_detail('{"error":{"message":"bad key"}}') == "bad key"
    assert error_detail("") == "(empty body)"


def test_cost_from_prices_and_counted_usage_is_marked() -> None:
    assert Prices(2.5, 10.0).cost_usd(TokenUsage(1000, 100)) == pytest.approx(0.0035)
    # 400 of the 1000 prompt tokens read from the provider's cache at $1.25/M
    cached = TokenUsage(1000, 100, cached_prompt_tokens=400)
    assert Prices(2.5, 10.0, 1.25).cost_usd(cached) == pytest.approx(
        (600 * 2.5 + 400 * 1.25 + 100 * 10.0) / 1e6)
    assert Prices(2.5, 10.0).cost_usd(cached) == pytest.approx(0.0035)  # no cached price
    # a count over the prompt (a confused peer) is capped at the prompt
    over = TokenUsage(1000, 100, cached_prompt_tokens=5000)
    assert Prices(2.5, 10.0, 0.0).cost_usd(over) == pytest.approx(0.001)
    u = counted_usage([{"role": "user", "content": "x" * 40}], 5)
    assert u.estimated and u.completion_tokens == 5 and u.prompt_tokens == 11 + 8


def test_openai_kwargs_pass_tools_and_formats_through_only_when_set() -> None:
    from cloud_bridge.wire import SamplingParams

    assert SamplingParams().openai_kwargs() == {"max_tokens": 256, "temperature": 0.7,
                                                "top_p": 1.0}
    tool = {"type": "function", "function": {"name": "f"}}
    kw = SamplingParams(tools=(tool,), tool_choice="auto", user="u1", logprobs=True,
                        response_format={"type": "json_object"}).openai_kwargs()
    assert kw["tools"] == [tool] and kw["tool_choice"] == "auto"
    assert kw["user"] == "u1" and kw["logprobs"] is True
    assert kw["response_format"] == {"type": "json_object"}
    # tool_choice alone would be refused by OpenAI: it goes only with tools.
    assert "tool_choice" not in SamplingParams(tool_choice="auto").openai_kwargs()


def test_tool_call_deltas_merge_like_the_sdk() -> None:
    from cloud_bridge.wire import merge_tool_calls, parse_chunk_piece

    first = ('{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function",'
             '"function":{"name":"get_weather","arguments":"{\\"city\\""}}]}}]}')
    rest = '{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":": 1}"}}]}}]}'
    pieces = [parse_chunk_piece("x", first), parse_chunk_piece("x", rest)]
    calls = merge_tool_calls([d for p in pieces for d in p.tool_calls])
    assert calls == ({"id": "c1", "type": "function",
                      "function": {"name": "get_weather", "arguments": '{"city": 1}'}},)


def test_one_fold_joins_streamed_pieces_and_whole_answers_alike() -> None:
    """fold is the one place pieces are joined: streamed tool-call deltas merge by index as
    OpenAI's SDK does; a whole answer passed as one piece (ChatResult.as_piece) comes back
    equal, two calls staying two; usage, finish and logprobs come from the pieces."""
    from cloud_bridge.usage import TokenUsage
    from cloud_bridge.wire import ChatResult, StreamPiece, fold

    streamed = [
        StreamPiece("Let me ", logprobs={"content": [{"token": "Let"}], "refusal": None}),
        StreamPiece(tool_calls=({"index": 0, "id": "a", "type": "function",
                                 "function": {"name": "f", "arguments": '{"x"'}},)),
        StreamPiece(tool_calls=({"index": 1, "id": "b", "function": {"name": "g",
                                                                    "arguments": "{}"}},
                                {"index": 0, "function": {"arguments": ": 1}"}})),
        StreamPiece("check.", logprobs={"content": [{"token": "check"}]}),
        StreamPiece(finish_reason="tool_calls", usage=TokenUsage(10, 5), cost_usd=0.002),
    ]
    got = fold(streamed)
    assert got.content == "Let me check." and got.finish_reason == "tool_calls"
    assert [c["function"] for c in got.tool_calls] == [
        {"name": "f", "arguments": '{"x": 1}'}, {"name": "g", "arguments": "{}"}]
    assert [c["id"] for c in got.tool_calls] == ["a", "b"]
    assert got.usage == TokenUsage(10, 5) and got.cost_usd == 0.002
    assert got.logprobs == {"content": [{"token": "Let"}, {"token": "check"}],
                            "refusal": None}
    whole = ChatResult("x", "tool_calls", TokenUsage(1, 2), tool_calls=got.tool_calls)
    assert fold([whole.as_piece()]).tool_calls == whole.tool_calls
    assert fold([]).usage == TokenUsage(0, 0)
