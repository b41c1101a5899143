"""Chat messages as they travel to an expert: OpenAI's shape, read in one place.

A message's ``content`` is a string, or (only when it holds media: images, audio, files)
OpenAI's list of content parts. The daemon turns a list of text parts into one string at
its edge, so most code only ever sees strings; whatever reads a message's text (token
bounds, the router's query, a usage estimate) reads it through :func:`message_text`, so a
message with media parts is counted the same way everywhere.

A leaf module: it imports nothing of the project, so ``wire``, ``usage`` and the daemon
all import it without a cycle.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal

Message = dict[str, Any]
Modality = Literal["image", "audio", "file"]
# Content-part types that carry media, and the modality an expert must declare for each.
MEDIA_PARTS: dict[str, Modality] = {"image_url": "image", "input_audio": "audio",
                                    "file": "file"}
# Content-part types that carry text, and the key that holds it (an assistant turn's
# refusal is what it said).
TEXT_PARTS = {"text": "text", "refusal": "refusal"}
TEXT_JOIN = "\n"  # between the text parts of one message, as vLLM joins them


def join_text(parts: Iterable[Mapping[str, Any]]) -> str:
    """The text of a list of content parts: text (and refusal) parts joined by a newline,
    media parts skipped."""
    out = []
    for part in parts:
        key = TEXT_PARTS.get(str(part.get("type")))
        if key is not None:
            out.append(str(part.get(key) or ""))
    return TEXT_JOIN.join(out)


def message_text(message: Mapping[str, Any]) -> str:
    """A message's text, whether its content is a string, a list of parts, or null."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return join_text(p for p in content if isinstance(p, Mapping))
    return ""


def media_parts(message: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The message's media parts (none when its content is a string)."""
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [p for p in content if isinstance(p, Mapping) and p.get("type") in MEDIA_PARTS]


def media_bytes(message: Mapping[str, Any]) -> int:
    """UTF-8 bytes of the message's media parts as JSON: what a token bound adds for them
    (a base64 image is counted by its bytes; one sent by URL is not bounded by them, the
    peer's usage settles its real count)."""
    parts = media_parts(message)
    return len(json.dumps(parts, ensure_ascii=False).encode()) if parts else 0


def first_media(messages: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Each modality the messages use, with the index of the first message using it."""
    found: dict[str, int] = {}
    for i, m in enumerate(messages):
        for part in media_parts(m):
            found.setdefault(MEDIA_PARTS[str(part["type"])], i)
    return found


def map_roles(messages: list[Message], *, developer: bool) -> list[Message]:
    """The messages with roles an endpoint does not take renamed: ``developer`` becomes
    ``system`` unless the endpoint declares it takes ``developer`` (OpenAI's own models
    read both alike; servers that predate the role, llama.cpp's among them, refuse it)."""
    if developer or not any(m.get("role") == "developer" for m in messages):
        return messages
    return [{**m, "role": "system"} if m.get("role") == "developer" else m for m in messages]
