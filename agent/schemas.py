"""Wire formats of the REST API: OpenAI chat completions, plus ``expert`` and ``routing``."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    StringConstraints,
    field_validator,
)

from cloud_bridge.usage import TokenUsage

Role = Literal["system", "user", "assistant", "developer"]
MAX_CONTENT_CHARS = 200_000


def json_number(value: Any) -> Any:
    """JSON Schema's number: a bool or a numeric string is not one (pydantic's lax mode
    would make ``false`` a limit of 0); 3.0 is an integer, as JSON Schema says."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError("must be a JSON number")
    return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Role = Field(description="Who wrote the message.")
    content: StrictStr = Field(max_length=MAX_CONTENT_CHARS, description="The message text.")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


class RoutingHints(BaseModel):
    """Per-request limits (body field ``edgeroute``); they only tighten the device's.
    Strict: ``false`` is not a limit of 0."""

    model_config = ConfigDict(extra="forbid")
    max_cost_usd: float | None = Field(None, ge=0, allow_inf_nan=False,
                                             description="Most this request may cost, USD.")
    max_latency_ms: float | None = Field(None, gt=0, allow_inf_nan=False,
                                               description="Latency limit, ms.")

    _numbers = field_validator("max_cost_usd", "max_latency_ms", mode="before")(json_number)


StopString = Annotated[StrictStr, StringConstraints(min_length=1, max_length=200)]


class ChatRequest(BaseModel):
    """Body of ``POST /v1/chat/completions`` and ``POST /predict``. Types are strict (no
    bool or string coerced to a number); the OpenAPI document states the limits the
    server's settings add (``openapi_limits``)."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr = Field("auto", description="'auto' to route, or an expert's name.")
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate.")
    max_completion_tokens: int | None = Field(None, ge=1,
                                                    description="Alias of max_tokens.")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    stop: StopString | Annotated[list[StopString], Field(max_length=4)] | None = Field(
        None, description="Up to 4 stop strings of 1 to 200 characters.")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Sampling seed.")
    n: int = Field(1, ge=1, le=1, description="Only 1 choice is supported.")
    stream: StrictBool = Field(False, description="Answer as server-sent events.")
    stream_options: StreamOptions | None = None
    edgeroute: RoutingHints | None = Field(None, description="edgeroute routing limits.")

    _numbers = field_validator("max_tokens", "max_completion_tokens", "temperature", "top_p",
                               "seed", "n", mode="before")(json_number)

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
        (405, "Method not allowed; see the Allow header"),
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


STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "A chat.completion, or with stream=true server-sent events",
          "content": {"text/event-stream": {"schema": {
              "type": "object", "description": "One event: data is a chat.completion.chunk "
              "as JSON, or [DONE]", "properties": {"data": {"type": "string"}}}}}},
}


def openapi_limits(doc: dict[str, Any], *, max_messages: int, max_tokens_cap: int,
                   max_message_chars: int) -> dict[str, Any]:
    """Write the limits this daemon's settings enforce into its OpenAPI document, so that
    a request the document allows is one the server takes (schemathesis holds us to it)."""
    schemas = doc.get("components", {}).get("schemas", {})
    chat = schemas.get("ChatRequest", {}).get("properties", {})
    if "messages" in chat:
        chat["messages"]["maxItems"] = max_messages
    for key in ("max_tokens", "max_completion_tokens"):
        for branch in chat.get(key, {}).get("anyOf", []):
            if branch.get("type") == "integer":
                branch["maximum"] = max_tokens_cap
    content = schemas.get("ChatMessage", {}).get("properties", {}).get("content")
    if content is not None:
        content["maxLength"] = min(MAX_CONTENT_CHARS, max_message_chars)
    return doc
