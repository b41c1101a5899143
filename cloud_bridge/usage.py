"""Token usage and what it costs: per call, from the peer's numbers or counted.

The peer's ``usage`` is authoritative. When it sends none (a stream cut short, or a
server that ignores ``stream_options.include_usage``) the bridge counts: one token per
streamed content delta (OpenAI-compatible servers stream one token per chunk) and about
four characters per prompt token, plus a few per message for the chat template. Counted
usage is marked ``estimated`` so a ledger can tell billed numbers from guesses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cloud_bridge.messages import Message, message_text

CHARS_PER_TOKEN = 4
TEMPLATE_TOKENS_PER_MESSAGE = 8  # role markers and separators a chat template adds


@dataclass(frozen=True)
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False
    cached_prompt_tokens: int = 0  # of prompt_tokens, read from a cache (OpenAI's cached_tokens)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Prices:
    """USD per one million tokens, as providers publish them."""

    input_usd_per_mtok: float = 0.0
    output_usd_per_mtok: float = 0.0
    cached_input_usd_per_mtok: float | None = None  # prompt tokens read from the provider's
    # cache (``usage.cached_prompt_tokens``); None: the input price

    def usd(self, prompt_tokens: float, completion_tokens: float,
            cached_prompt_tokens: float = 0.0) -> float:
        """The one price-to-cost function: what these tokens cost (a budget's worst case,
        the policy's expectation and the ledger's bill alike). Works on numpy arrays too."""
        cached_price = (self.input_usd_per_mtok if self.cached_input_usd_per_mtok is None
                        else self.cached_input_usd_per_mtok)
        return ((prompt_tokens - cached_prompt_tokens) * self.input_usd_per_mtok
                + cached_prompt_tokens * cached_price
                + completion_tokens * self.output_usd_per_mtok) / 1e6

    def cost_usd(self, usage: TokenUsage) -> float:
        """What a call billed (prompt tokens read from the provider's cache at its price)."""
        cached = min(max(usage.cached_prompt_tokens, 0), usage.prompt_tokens)
        return self.usd(usage.prompt_tokens, usage.completion_tokens, cached)


def estimate_prompt_tokens(messages: list[Message]) -> int:
    """A rough prompt size for when the peer reports none (about 4 characters a token,
    plus the chat template's markers per message)."""
    chars = sum(len(message_text(m)) + len(m.get("role", "")) for m in messages)
    return math.ceil(chars / CHARS_PER_TOKEN) + TEMPLATE_TOKENS_PER_MESSAGE * len(messages)


def counted_usage(messages: list[Message], n_deltas: int) -> TokenUsage:
    return TokenUsage(estimate_prompt_tokens(messages), n_deltas, estimated=True)
