"""The expert interface: one ``complete`` and one ``stream``, local or cloud alike.

The call vocabulary belongs to ``cloud_bridge`` (sampling parameters, token usage with
its ``estimated`` flag, prices, whole answers and streamed pieces): a local expert
answers in the same types, so nothing is translated between the two kinds of expert.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from agent import __version__
from cloud_bridge.messages import Message, Modality
from cloud_bridge.usage import Prices, TokenUsage
from cloud_bridge.wire import ChatResult, SamplingParams, StreamPiece

__all__ = ["Expert", "ExpertInfo", "ExpertKind", "Message"]
ExpertKind = Literal["local", "cloud"]


@dataclass(frozen=True)
class ExpertInfo:
    """What the router and the policy know about an expert without calling it. Prices
    live here once (a cloud expert's bridge endpoint holds the same object)."""

    name: str
    kind: ExpertKind
    model: str
    prices: Prices = field(default_factory=Prices)
    fallback_to_local: bool = True  # may the first local expert answer when this one fails
    extra: dict[str, Any] = field(default_factory=dict)
    # Capabilities, hard constraints in the policy (simonw/llm's ``can_stream`` idea).
    context_tokens: int | None = None  # prompt + max_tokens must fit; None: unknown, no check
    tools: bool = False  # answers requests with ``tools``
    json_mode: bool = False  # honours ``response_format``
    modalities: frozenset[Modality] = frozenset()  # media it reads besides text
    # Calls it serves at once, which admission lets in (a local model: its batch slots;
    # a cloud expert: the server's ``max_inflight_cloud`` instead).
    concurrency: int = 1

    def cost_usd(self, usage: TokenUsage) -> float:
        return self.prices.cost_usd(usage)

    @property
    def fingerprint(self) -> str:
        """OpenAI's ``system_fingerprint``: names the configuration an answer came from
        (expert, model, daemon version), so a client comparing seeded answers sees when
        it changed. A string: the published schema has no null for it."""
        key = f"{__version__}\0{self.kind}\0{self.name}\0{self.model}".encode()
        return "fp_" + hashlib.sha256(key).hexdigest()[:12]


@runtime_checkable
class Expert(Protocol):
    info: ExpertInfo

    async def complete(self, messages: list[Message], params: SamplingParams) -> ChatResult:
        """Answer a chat in one piece."""
        ...

    def stream(self, messages: list[Message], params: SamplingParams) -> AsyncIterator[StreamPiece]:
        """Answer a chat as pieces; the last piece carries finish_reason and usage."""
        ...

    def available(self) -> bool:
        """False while the expert cannot take calls (a cloud expert's open breaker)."""
        ...

    async def aclose(self) -> None:
        """Release what the expert holds (model memory, connections)."""
        ...
