"""Wire formats of the REST API: OpenAI chat completions, plus ``expert`` and ``routing``."""

from __future__ import annotations

import time
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

from agent.decision_log import new_completion_id
from agent.errors import RequestError
from agent.settings import ServerSettings
from cloud_bridge.messages import MEDIA_PARTS, Message, join_text
from cloud_bridge.usage import TokenUsage
from cloud_bridge.wire import SamplingParams

Role = Literal["system", "user", "assistant", "developer", "tool"]
MAX_CONTENT_CHARS = 200_000


def json_number(value: Any) -> Any:
    """JSON Schema's number: a bool or a numeric string is not one (pydantic's lax mode
    would make ``false`` a limit of 0); 3.0 is an integer, as JSON Schema says."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError("must be a JSON number")
    return value


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: StrictStr = Field(max_length=MAX_CONTENT_CHARS)


class RefusalPart(BaseModel):
    """An assistant turn's refusal: part of what it said, so part of its text."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["refusal"]
    refusal: StrictStr = Field(max_length=MAX_CONTENT_CHARS)


class ImageUrl(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: StrictStr
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["image_url"]
    image_url: ImageUrl


class InputAudio(BaseModel):
    model_config = ConfigDict(extra="ignore")
    data: StrictStr
    format: Literal["wav", "mp3"]


class AudioPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileRef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    filename: StrictStr | None = None
    file_data: StrictStr | None = None
    file_id: StrictStr | None = None


class FilePart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["file"]
    file: FileRef


ContentPart = Annotated[TextPart | RefusalPart | ImagePart | AudioPart | FilePart,
                        Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Role = Field(description="Who wrote the message.")
    content: (Annotated[StrictStr, Field(max_length=MAX_CONTENT_CHARS)]
              | Annotated[list[ContentPart], Field(min_length=1)]
              | None) = Field(
        None,
        description="The message text, or OpenAI's content parts: text parts are joined "
                    "into the text (by newlines); image_url, input_audio and file parts go "
                    "only to experts that declare that modality (null: no text, e.g. an "
                    "assistant turn that only calls tools).")
    tool_calls: list[dict[str, Any]] | None = Field(
        None, max_length=128, description="An assistant turn's tool calls, as it made them.")
    tool_call_id: StrictStr | None = Field(None, description="A tool turn: the call answered.")
    name: StrictStr | None = Field(None, description="Optional author name.")

    def plain(self) -> Message:
        """The message as experts take it: content a string (text parts joined; a
        tools-only assistant turn has ""), or OpenAI's parts as sent when it holds
        media; tool fields only when set."""
        content: str | list[dict[str, Any]]
        if isinstance(self.content, list):
            parts = [p.model_dump(exclude_none=True) for p in self.content]
            media = any(p["type"] in MEDIA_PARTS for p in parts)
            content = parts if media else join_text(parts)
        else:
            content = self.content or ""
        d: dict[str, Any] = {"role": self.role, "content": content}
        for key in ("tool_calls", "tool_call_id", "name"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d


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

    cascade: StrictBool | None = Field(
        None, description="Local-first cascade for this request (default: the device's "
                          "policy.cascade setting).")

    _numbers = field_validator("max_cost_usd", "max_latency_ms", mode="before")(json_number)


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: StrictStr = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Function name.")
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = Field(None, description="JSON Schema of the arguments.")
    strict: StrictBool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: StrictStr = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: StrictStr = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's response_format; ``json_schema`` needs its ``json_schema`` object."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    def as_openai(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, by_alias=True)


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
    temperature: float | None = Field(0.7, ge=0.0, le=2.0,
                                      description="Sampling temperature (null: 0.7).")
    top_p: float | None = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass "
                                "(null: 1).")
    stop: StopString | Annotated[list[StopString], Field(max_length=4)] | None = Field(
        None, description="Up to 4 stop strings of 1 to 200 characters.")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Sampling seed.")
    n: int | None = Field(1, ge=1, le=1, description="Only 1 choice is supported.")
    stream: StrictBool | None = Field(False, description="Answer as server-sent events.")
    stream_options: StreamOptions | None = None
    edgeroute: RoutingHints | None = Field(None, description="edgeroute routing limits.")
    tools: list[Tool] | None = Field(
        None, max_length=128,
        description="Functions the model may call: routed only to experts that declare tools.")
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="Whether and which tool to call (with tools only).")
    response_format: ResponseFormat | None = Field(
        None, description="text, json_object or json_schema: routed to experts with JSON mode.")
    logprobs: StrictBool | None = Field(
        None, description="Ask the expert for logprobs (cloud experts pass theirs through; "
                          "local experts answer null).")
    top_logprobs: int | None = Field(None, ge=0, le=20,
                                     description="Most likely tokens per position, with "
                                                 "logprobs.")
    user: StrictStr | None = Field(None, max_length=256,
                                   description="End-user id, passed to cloud experts.")

    _numbers = field_validator("max_tokens", "max_completion_tokens", "temperature", "top_p",
                               "seed", "n", "top_logprobs", mode="before")(json_number)

    def stop_tuple(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def plain_messages(self) -> list[Message]:
        """The messages as experts take them (:meth:`ChatMessage.plain`)."""
        return [m.plain() for m in self.messages]


def sampling_params(req: ChatRequest, server: ServerSettings) -> SamplingParams:
    """How to sample the request's answer, after the limits the settings add (a
    ``max_tokens`` over the cap is a 400 naming it)."""
    cap = server.max_tokens_cap
    for key in ("max_tokens", "max_completion_tokens"):
        asked = getattr(req, key)
        if asked is not None and asked > cap:
            raise RequestError(
                f"{key} {asked} exceeds this daemon's cap of {cap}; ask for fewer",
                param=key,
                code="max_tokens_too_large",
            )
    # An operator who lowers the cap below the default must not break every request
    # that omits max_tokens: the default is clamped, an explicit value is checked.
    max_tokens = (req.max_tokens or req.max_completion_tokens
                  or min(server.default_max_tokens, cap))
    tool_choice = req.tool_choice
    defaults = ChatRequest.model_fields  # OpenAI's null means the default
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=(defaults["temperature"].default if req.temperature is None
                     else req.temperature),
        top_p=defaults["top_p"].default if req.top_p is None else req.top_p,
        stop=req.stop_tuple(),
        seed=req.seed,
        tools=tuple(t.model_dump(exclude_none=True) for t in req.tools or ()),
        tool_choice=(tool_choice.model_dump() if tool_choice is not None
                     and not isinstance(tool_choice, str) else tool_choice),
        response_format=req.response_format.as_openai() if req.response_format else None,
        logprobs=req.logprobs,
        top_logprobs=req.top_logprobs,
        user=req.user,
    )


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
    """A completion id for a reply no decision named (``agent.decision_log``)."""
    return new_completion_id()


def usage_dict(usage: TokenUsage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
    }


def completion_body(
    *,
    cid: str,
    expert: str,
    content: str,
    finish_reason: str,
    usage: TokenUsage,
    routing: dict[str, Any],
    fingerprint: str,
    tool_calls: tuple[dict[str, Any], ...] = (),
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion`` with every field OpenAI's published schema requires
    (``CreateChatCompletionResponse``: ``refusal`` and ``logprobs`` null when there are
    none), plus ``expert`` and ``routing``."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:  # OpenAI's shape: content null when the turn only calls tools
        message = {"role": "assistant", "content": content or None, "refusal": None,
                   "tool_calls": list(tool_calls)}
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": expert,
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": logprobs,
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
    fingerprint: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    usage: TokenUsage | None = None,
    routing: dict[str, Any] | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk`` as OpenAI streams one (``logprobs`` null when the
    piece has none; the usage chunk has no choices), plus ``expert`` and, on the first,
    ``routing``."""
    body: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": expert,
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                     "finish_reason": finish_reason}],
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
                   max_message_chars: int, max_content_parts: int, tools: bool = True,
                   json_mode: bool = True,
                   modalities: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Write the limits this daemon's settings enforce into its OpenAPI document, so that
    a request the document allows is one the server takes (schemathesis holds us to it).
    One limit stays beyond JSON Schema: a message's text parts, joined, must fit
    ``max_message_chars`` too (each part does; with ``max_content_parts`` 1, exactly)."""
    schemas = doc.get("components", {}).get("schemas", {})
    _content_parts(schemas, min(MAX_CONTENT_CHARS, max_message_chars), max_content_parts,
                   modalities)
    chat = schemas.get("ChatRequest", {}).get("properties", {})
    if "messages" in chat:
        chat["messages"]["maxItems"] = max_messages
    for key in ("max_tokens", "max_completion_tokens"):
        for branch in chat.get(key, {}).get("anyOf", []):
            if branch.get("type") == "integer":
                branch["maximum"] = max_tokens_cap
    if not tools:  # no expert declares tools: no tools, no tool turns
        empty = [{"type": "array", "maxItems": 0}, {"type": "null"}]
        if "tools" in chat:
            chat["tools"]["anyOf"] = empty
        message = schemas.get("ChatMessage", {}).get("properties", {})
        if "tool_calls" in message:
            message["tool_calls"]["anyOf"] = empty
        role = message.get("role", {})
        if "tool" in role.get("enum", []):
            role["enum"] = [r for r in role["enum"] if r != "tool"]
    if not json_mode and "ResponseFormat" in schemas:
        schemas["ResponseFormat"]["properties"]["type"] = {"const": "text", "type": "string"}
    content = schemas.get("ChatMessage", {}).get("properties", {}).get("content")
    for branch in (content or {}).get("anyOf", []):
        if branch.get("type") == "string":
            branch["maxLength"] = min(MAX_CONTENT_CHARS, max_message_chars)
    return doc


PART_SCHEMAS = {"image_url": "ImagePart", "input_audio": "AudioPart", "file": "FilePart"}
TEXT_PART_FIELDS = {"TextPart": "text", "RefusalPart": "refusal"}


def _content_parts(schemas: dict[str, Any], max_chars: int, max_parts: int,
                   modalities: frozenset[str]) -> None:
    """Content parts as this daemon takes them: at most ``max_parts``, text parts of at
    most ``max_chars``, and media parts only of a modality some expert declares."""
    for name, key in TEXT_PART_FIELDS.items():
        prop = schemas.get(name, {}).get("properties", {}).get(key)
        if prop is not None:
            prop["maxLength"] = max_chars
    content = schemas.get("ChatMessage", {}).get("properties", {}).get("content") or {}
    for branch in content.get("anyOf", []):
        if branch.get("type") != "array":
            continue
        branch["maxItems"] = max_parts
        items = branch.get("items", {})
        gone = {f"#/components/schemas/{PART_SCHEMAS[t]}" for t, m in MEDIA_PARTS.items()
                if m not in modalities}
        items["oneOf"] = [p for p in items.get("oneOf", []) if p.get("$ref") not in gone]
        mapping = items.get("discriminator", {}).get("mapping", {})
        for tag in [t for t, ref in mapping.items() if ref in gone]:
            del mapping[tag]
