"""OpenAI's published OpenAPI document for ``POST /chat/completions`` (a trimmed copy with
its MIT license in ``../shared/openai-openapi/``), loaded for schemathesis.

Two changes are made in memory, both on the request side or on how a stream is framed,
never to a reply's schema:

- the request is narrowed so a fuzzing run finishes in minutes against a real local
  model, as the copy's SOURCE.md allows: ``model`` is ``auto``, ``max_tokens`` and
  ``max_completion_tokens`` are at most ``MAX_TOKENS``, ``n`` is 1 (and, for the streamed
  pass, ``stream`` is true);
- the ``text/event-stream`` reply says what OpenAI's prose says of it in OpenAPI 3.2's
  terms (``itemSchema``: each event's ``data`` is a JSON ``CreateChatCompletionStreamResponse``,
  the last one ``[DONE]``). OpenAI's document gives the chunk as the media type's
  ``schema``, which OpenAPI 3.1 tools (schemathesis) apply to each event object
  (``{"data": ..., "event": ...}``) instead of its data. The chunk schema is untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SHARED

SPEC = SHARED / "openai-openapi" / "chat-completions.yaml"
MAX_TOKENS = 4
CHUNK = "#/components/schemas/CreateChatCompletionStreamResponse"


def _load(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        pytest.skip(f"OpenAI's OpenAPI document is not at {path}")
    return yaml.safe_load(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def openai_document(*, stream: bool | None = None) -> dict[str, Any]:
    """The document, narrowed (``stream``: None as published, True: always streamed)."""
    doc = _load(SPEC)
    request = doc["components"]["schemas"]["CreateChatCompletionRequest"]["allOf"][1]
    props = request["properties"]
    props["model"] = {"type": "string", "enum": ["auto"]}
    for key in ("max_tokens", "max_completion_tokens"):
        props[key] = {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS, "nullable": True}
    props["n"] = {"type": "integer", "minimum": 1, "maximum": 1, "nullable": True}
    if stream:
        props["stream"] = {"type": "boolean", "enum": [True]}
        request["required"] = [*request["required"], "stream"]
    sse = doc["paths"]["/chat/completions"]["post"]["responses"]["200"]["content"][
        "text/event-stream"]
    assert sse.pop("schema") == {"$ref": CHUNK}, "the published stream schema changed"
    sse["itemSchema"] = {"type": "object", "required": ["data"], "properties": {"data": {
        "type": "string", "if": {"const": "[DONE]"},
        "else": {"contentMediaType": "application/json", "contentSchema": {"$ref": CHUNK}}}}}
    return doc


def chat_operation(*, stream: bool | None = None) -> Any:
    """schemathesis's view of ``POST /chat/completions`` in that document."""
    import schemathesis

    schema = schemathesis.openapi.from_dict(openai_document(stream=stream))
    return schema["/chat/completions"]["POST"]
