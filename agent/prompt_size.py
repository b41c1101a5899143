"""How big a chat prompt is, counted once per request and passed along the request path.

Two counts, each with one use:

- ``upper_bound``: no BPE tokenizer yields more tokens than UTF-8 bytes, plus a margin per
  message for role markers and a fixed one for a template's default system prompt; tool
  definitions and earlier tool calls are prompt too (their JSON bytes). Budgets reserve
  it, the context check uses it (until an expert's own tokenizer says otherwise), and the
  ledger bills it when a peer reports no usage. Over-reserving costs nothing but headroom.
- ``typical``: the count English text usually has (about four characters a token,
  ``cloud_bridge.usage.estimate_prompt_tokens``): what the policy expects to pay.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cloud_bridge.messages import media_bytes, message_text
from cloud_bridge.usage import CHARS_PER_TOKEN, estimate_prompt_tokens

MESSAGE_MARGIN = 32  # bytes: role markers of one message
TEMPLATE_MARGIN = 256  # bytes: a chat template's default system prompt


@dataclass(frozen=True)
class PromptSize:
    upper_bound: int  # reservations, context checks, billing a usage the peer did not send
    typical: int  # the policy's expected cost
    tool_bytes: int = 0  # of upper_bound: tool definitions and earlier tool calls


def tool_bytes(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] = ()) -> int:
    """JSON bytes of the tools offered and the tool calls already made."""
    parts: list[Any] = [m["tool_calls"] for m in messages if m.get("tool_calls")]
    if tools:
        parts.append(list(tools))
    return len(json.dumps(parts, ensure_ascii=False).encode()) if parts else 0


def content_upper_bound(messages: Sequence[dict[str, Any]]) -> int:
    """The bound of the message contents alone (no tools): their text's bytes, and a media
    part's JSON bytes (``cloud_bridge.messages.media_bytes``)."""
    return sum(len(message_text(m).encode()) + media_bytes(m) + MESSAGE_MARGIN
               for m in messages) + TEMPLATE_MARGIN


def prompt_size(messages: Sequence[dict[str, Any]],
                tools: Sequence[dict[str, Any]] = ()) -> PromptSize:
    extra = tool_bytes(messages, tools)
    return PromptSize(content_upper_bound(messages) + extra,
                      estimate_prompt_tokens(list(messages)) + -(-extra // CHARS_PER_TOKEN),
                      extra)
