"""The OpenAI chat-completions wire format: the request body and parsing the answers.

Parsers are strict about what they need (a choice, its content) and lenient about the
rest, because vLLM, TGI, llama.cpp and gateways add and omit fields differently. Anything
unusable becomes :class:`MalformedResponse` naming what was missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cloud_bridge.errors import MalformedResponse, UpstreamStatusError
from cloud_bridge.usage import TokenUsage


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one answer: the one shape every expert takes (local llama.cpp speaks
    the same OpenAI keyword arguments). The daemon validates and clamps them first."""

    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def openai_kwargs(self) -> dict[str, Any]:
        """OpenAI's keyword arguments: ``stop`` and ``seed`` only when set, because some
        servers reject an empty stop list or a null seed."""
        kw: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": self.temperature,
                              "top_p": self.top_p}
        if self.stop:
            kw["stop"] = list(self.stop)
        if self.seed is not None:
            kw["seed"] = self.seed
        return kw


@dataclass(frozen=True)
class ChatResult:
    """One plain completion: what was said, why it stopped, what it used and cost. Local
    experts answer with the same type (at no cost)."""

    content: str
    finish_reason: str
    usage: TokenUsage
    cost_usd: float = 0.0
    attempts: int = 1


@dataclass(frozen=True)
class StreamPiece:
    """One streamed piece. The last has ``finish_reason``, ``usage`` and ``cost_usd``.
    Local experts stream the same type."""

    content: str = ""
    finish_reason: str | None = None
    usage: TokenUsage | None = None
    cost_usd: float | None = None


def request_body(
    model: str, messages: list[dict[str, str]], params: SamplingParams, *, stream: bool
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
    try:
        return TokenUsage(int(usage["prompt_tokens"]), int(usage.get("completion_tokens", 0)))
    except (KeyError, TypeError, ValueError):
        return None


def _raise_in_band_error(expert: str, obj: dict[str, Any]) -> None:
    err = obj.get("error")
    if err is None:
        return
    message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    raise UpstreamStatusError(expert, 200, f"error event from peer: {message}")


def parse_completion(expert: str, text: str) -> tuple[str, str, TokenUsage | None]:
    """``(content, finish_reason, usage)`` from a plain chat.completion body."""
    obj = _load(expert, text, "completion body")
    _raise_in_band_error(expert, obj)
    try:
        choice = obj["choices"][0]
        content = choice["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise MalformedResponse(expert, f"completion has no choices[0].message: {text[:120]!r}") \
            from exc
    return str(content), str(choice.get("finish_reason") or "stop"), parse_usage(obj)


def parse_chunk(expert: str, payload: str) -> tuple[str, str | None, TokenUsage | None]:
    """``(content, finish_reason, usage)`` from one chat.completion.chunk payload.

    The usage-only final chunk OpenAI sends with ``include_usage`` has empty choices.
    """
    obj = _load(expert, payload, "stream chunk")
    _raise_in_band_error(expert, obj)
    choices = obj.get("choices") or []
    content, finish = "", None
    if choices:
        choice = choices[0] if isinstance(choices[0], dict) else {}
        delta = choice.get("delta") or {}
        content = (delta.get("content") or "") if isinstance(delta, dict) else ""
        finish = choice.get("finish_reason")
    return str(content), (str(finish) if finish else None), parse_usage(obj)


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
