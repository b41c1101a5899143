"""The OpenAI chat-completions wire format: the request body and parsing the answers.

Parsers are strict about what they need (a choice, its content) and lenient about the
rest, because vLLM, TGI, llama.cpp and gateways add and omit fields differently. Anything
unusable becomes :class:`MalformedResponse` naming what was missing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cloud_bridge.errors import MalformedResponse, UpstreamStatusError
from cloud_bridge.messages import Message
from cloud_bridge.usage import TokenUsage

# OpenAI's choice ``logprobs`` object ({"content": [...], "refusal": [...]}), passed through
# as the peer sent it.
Logprobs = dict[str, Any]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one answer: the one shape every expert takes (local llama.cpp speaks
    the same OpenAI keyword arguments). The daemon validates and clamps them first."""

    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Passed through as the client sent them (the daemon validated their shape).
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    user: str | None = None

    @property
    def json_mode(self) -> bool:
        """The answer must be JSON (``response_format`` other than text)."""
        return self.response_format is not None and self.response_format.get("type") != "text"

    def openai_kwargs(self) -> dict[str, Any]:
        """OpenAI's keyword arguments, the one place they are built: optional ones only
        when set, because some servers reject an empty stop list, a null seed or a
        tool_choice without tools."""
        kw: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": self.temperature,
                              "top_p": self.top_p}
        if self.stop:
            kw["stop"] = list(self.stop)
        if self.seed is not None:
            kw["seed"] = self.seed
        if self.tools:
            kw["tools"] = list(self.tools)
            if self.tool_choice is not None:
                kw["tool_choice"] = self.tool_choice
        for key in ("response_format", "logprobs", "top_logprobs", "user"):
            if getattr(self, key) is not None:
                kw[key] = getattr(self, key)
        return kw


@dataclass(frozen=True)
class AnswerConfidence:
    """How sure a model was of the answer it generated: the mean and the minimum natural-log
    probability of its generated tokens under the model's own (untempered) distribution.
    Local experts report it for free while generating; the cascade keeps a local answer
    whose confidence clears a threshold (issue #18)."""

    mean_logprob: float
    min_logprob: float
    tokens: int

    def as_dict(self) -> dict[str, Any]:
        return {"mean_logprob": round(self.mean_logprob, 4),
                "min_logprob": round(self.min_logprob, 4), "tokens": self.tokens}


@dataclass(frozen=True)
class ChatResult:
    """One plain completion: what was said, why it stopped, what it used and cost. Local
    experts answer with the same type (at no cost)."""

    content: str
    finish_reason: str
    usage: TokenUsage
    cost_usd: float = 0.0
    attempts: int = 1
    tool_calls: tuple[dict[str, Any], ...] = ()  # whole calls: id, type, function
    confidence: AnswerConfidence | None = None  # local experts' token log-probabilities
    logprobs: Logprobs | None = None  # a cloud expert's, when the request asked for them

    def as_piece(self) -> StreamPiece:
        """The whole answer as one final piece; its tool calls become deltas with their
        index, so :func:`fold` gives the same calls back."""
        return StreamPiece(self.content, self.finish_reason, self.usage, self.cost_usd,
                           tuple({"index": i, **c} for i, c in enumerate(self.tool_calls)),
                           self.confidence, self.logprobs)


@dataclass(frozen=True)
class StreamPiece:
    """One streamed piece. The last has ``finish_reason``, ``usage`` and ``cost_usd``.
    Local experts stream the same type."""

    content: str = ""
    finish_reason: str | None = None
    usage: TokenUsage | None = None
    cost_usd: float | None = None
    tool_calls: tuple[dict[str, Any], ...] = ()  # deltas as streamed: index, id, fragments
    confidence: AnswerConfidence | None = None  # on the last piece, where the expert has it
    logprobs: Logprobs | None = None  # this piece's tokens' (a cloud chunk's), if asked for


def fold(pieces: Iterable[StreamPiece], *, attempts: int = 1) -> ChatResult:
    """One answer from its pieces: the only place streamed pieces are joined (the bridge's
    plain call, a local expert's gathered answer, the daemon's plain reply). Content is
    concatenated, tool-call deltas merged by index (OpenAI's own accumulation), logprobs
    concatenated; finish reason, usage, cost and confidence come from the last piece that
    has them."""
    parts: list[str] = []
    deltas: list[dict[str, Any]] = []
    logprobs: list[Logprobs | None] = []
    finish: str | None = None
    usage: TokenUsage | None = None
    cost: float | None = None
    confidence: AnswerConfidence | None = None
    for p in pieces:
        parts.append(p.content)
        deltas.extend(p.tool_calls)
        logprobs.append(p.logprobs)
        finish = p.finish_reason or finish
        usage = p.usage or usage
        cost = p.cost_usd if p.cost_usd is not None else cost
        confidence = p.confidence or confidence
    return ChatResult("".join(parts), finish or "stop", usage or TokenUsage(0, 0), cost or 0.0,
                      attempts=attempts, tool_calls=merge_tool_calls(deltas),
                      confidence=confidence, logprobs=merge_logprobs(logprobs))


def merge_logprobs(parts: Iterable[Logprobs | None]) -> Logprobs | None:
    """One answer's logprobs from its pieces': the token lists concatenated in order, the
    way a client joins a stream's chunks; None when no piece had any."""
    merged: Logprobs | None = None
    for part in parts:
        if not part:
            continue
        merged = merged or {"content": None, "refusal": None}
        for key in ("content", "refusal"):
            tokens = part.get(key)
            if isinstance(tokens, list):
                merged[key] = [*(merged[key] or []), *tokens]
    return merged


def merge_tool_calls(deltas: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """Whole tool calls from streamed deltas, the way OpenAI's SDK accumulates them: by
    ``index``, the name and id from whichever delta has them, arguments concatenated."""
    calls: dict[int, dict[str, Any]] = {}
    for d in deltas:
        call = calls.setdefault(int(d.get("index", 0)), {
            "id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        call["id"] = d.get("id") or call["id"]
        fn = d.get("function") or {}
        call["function"]["name"] = fn.get("name") or call["function"]["name"]
        call["function"]["arguments"] += fn.get("arguments") or ""
    return tuple(calls[i] for i in sorted(calls))


def request_body(
    model: str, messages: list[Message], params: SamplingParams, *, stream: bool
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": messages, **params.openai_kwargs(),
                            "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def _load(expert: str, text: str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise MalformedResponse(expert, f"{what} is not JSON: {text[:120]!r}") from exc
    if not isinstance(obj, dict):
        raise MalformedResponse(expert, f"{what} is not a JSON object: {text[:120]!r}")
    return obj


def parse_usage(obj: dict[str, Any]) -> TokenUsage | None:
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details")
    try:
        cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
        return TokenUsage(int(usage["prompt_tokens"]), int(usage.get("completion_tokens", 0)),
                          cached_prompt_tokens=cached)
    except (KeyError, TypeError, ValueError):
        return None


def _raise_in_band_error(expert: str, obj: dict[str, Any]) -> None:
    err = obj.get("error")
    if err is None:
        return
    message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    raise UpstreamStatusError(expert, 200, f"error event from peer: {message}")


def _logprobs(choice: dict[str, Any]) -> Logprobs | None:
    value = choice.get("logprobs")
    return value if isinstance(value, dict) else None


def _tool_calls(obj: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    calls = obj.get("tool_calls")
    return tuple(c for c in calls if isinstance(c, dict)) if isinstance(calls, list) else ()


def parse_completion_message(expert: str, text: str) -> ChatResult:
    """A plain chat.completion body: content, tool calls, finish_reason, usage (counted
    as zero when the peer sent none; ``parse_usage`` tells)."""
    obj = _load(expert, text, "completion body")
    _raise_in_band_error(expert, obj)
    try:
        choice = obj["choices"][0]
        message = choice["message"]
        content = message.get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise MalformedResponse(expert, f"completion has no choices[0].message: {text[:120]!r}") \
            from exc
    return ChatResult(str(content), str(choice.get("finish_reason") or "stop"),
                      parse_usage(obj) or TokenUsage(0, 0), tool_calls=_tool_calls(message),
                      logprobs=_logprobs(choice) if isinstance(choice, dict) else None)


def parse_completion(expert: str, text: str) -> tuple[str, str, TokenUsage | None]:
    """``(content, finish_reason, usage)`` from a plain chat.completion body."""
    result = parse_completion_message(expert, text)
    return result.content, result.finish_reason, parse_usage(_load(expert, text, "body"))


def parse_chunk_piece(expert: str, payload: str) -> StreamPiece:
    """One chat.completion.chunk payload as a piece (its tool-call deltas included).

    The usage-only final chunk OpenAI sends with ``include_usage`` has empty choices.
    """
    obj = _load(expert, payload, "stream chunk")
    _raise_in_band_error(expert, obj)
    choices = obj.get("choices") or []
    content, finish = "", None
    calls: tuple[dict[str, Any], ...] = ()
    logprobs = None
    if choices:
        choice = choices[0] if isinstance(choices[0], dict) else {}
        delta = choice.get("delta") or {}
        if isinstance(delta, dict):
            content = delta.get("content") or ""
            calls = _tool_calls(delta)
        finish = choice.get("finish_reason")
        logprobs = _logprobs(choice)
    return StreamPiece(str(content), str(finish) if finish else None, parse_usage(obj),
                       tool_calls=calls, logprobs=logprobs)


def parse_chunk(expert: str, payload: str) -> tuple[str, str | None, TokenUsage | None]:
    """``(content, finish_reason, usage)`` from one chat.completion.chunk payload."""
    piece = parse_chunk_piece(expert, payload)
    return piece.content, piece.finish_reason, piece.usage


# What a validation error looks like in an error body, whatever the status it came with:
# OpenAI's error type, FastAPI's 422 ``detail`` list, pydantic's own wording (llama.cpp's
# server turns a request its schema refuses into a 500 carrying pydantic's errors).
_VALIDATION_TEXT = re.compile(
    r"invalid_request_error|validation error|['\"]loc['\"]\s*:|Input should be|"
    r"Field required|Extra inputs are not permitted", re.IGNORECASE)


def validation_error_body(text: str) -> bool:
    """Whether an error body says the request was invalid (so the peer is fine)."""
    return bool(_VALIDATION_TEXT.search(text[:4096]))


def error_detail(text: str) -> str:
    """The message of an OpenAI-style error body, else the body's start."""
    try:
        obj = json.loads(text)
        err = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
    except ValueError:
        pass
    return text[:300] or "(empty body)"
