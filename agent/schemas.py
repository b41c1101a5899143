"""Wire formats of the REST API: OpenAI chat completions, plus ``expert`` and ``routing``."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from cloud_bridge.usage import TokenUsage

Role = Literal["system", "user", "assistant", "developer"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Role = Field(description="Who wrote the message.")
    content: StrictStr = Field(max_length=200_000, description="The message text.")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class RoutingHints(BaseModel):
    """Per-request limits (body field ``edgeroute``); they only tighten the device's."""

    model_config = ConfigDict(extra="forbid")
    max_cost_usd: float | None = Field(None, ge=0, description="Most this request may cost.")
    max_latency_ms: float | None = Field(None, gt=0, description="Latency limit, ms.")


class ChatRequest(BaseModel):
    """Body of ``POST /v1/chat/completions`` and ``POST /predict``."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr = Field("auto", description="'auto' to route, or an expert's name.")
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Alias of max_tokens.")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    stop: StrictStr | list[StrictStr] | None = Field(None, description="Up to 4 stop strings.")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Sampling seed.")
    n: int = Field(1, ge=1, le=1, description="Only 1 choice is supported.")
    stream: bool = Field(False, description="Answer as server-sent events.")
    stream_options: StreamOptions | None = None
    edgeroute: RoutingHints | None = Field(None, description="edgeroute routing limits.")

    @field_validator("stop")
    @classmethod
    def _stop_ok(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if len(items) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s or len(s) > 200 for s in items):
            raise ValueError("stop sequences must be 1 to 200 characters")
        return v

    def stop_tuple(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def plain_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every non-2xx answer: OpenAI's error shape."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "Bad request: the body names the field"),
        (401, "Missing or wrong bearer token"),
        (404, "Unknown expert or path"),
        (409, "Router bundle refused"),
        (413, "Request body too large"),
        (429, "Refused by a budget"),
        (502, "The expert failed"),
        (503, "Experts busy or unavailable; see Retry-After"),
    )
}


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def usage_dict(usage: TokenUsage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def completion_body(
    *,
    cid: str,
    expert: str,
    content: str,
    finish_reason: str,
    usage: TokenUsage,
    routing: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": expert,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage_dict(usage),
        "expert": expert,
        "routing": routing,
    }


def chunk_body(
    *,
    cid: str,
    created: int,
    expert: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    usage: TokenUsage | None = None,
    routing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": expert,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        "expert": expert,
    }
    if usage is not None:
        body["usage"] = usage_dict(usage)
        body["choices"] = []
    if routing is not None:
        body["routing"] = routing
    return body
