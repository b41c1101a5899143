"""The expert interface: one ``complete`` and one ``stream``, local or cloud alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Message = dict[str, str]
ExpertKind = Literal["local", "cloud"]


@dataclass(frozen=True)
class GenerationParams:
    """Validated sampling parameters; the server clamps them before they get here."""

    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Completion:
    content: str
    finish_reason: str
    usage: Usage


@dataclass(frozen=True)
class Delta:
    """One streamed piece. The last one has ``finish_reason`` and ``usage`` set."""

    content: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True)
class ExpertInfo:
    """What the router and the policy know about an expert without calling it."""

    name: str
    kind: ExpertKind
    model: str
    input_usd_per_mtok: float = 0.0
    output_usd_per_mtok: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def cost_usd(self, usage: Usage) -> float:
        return (
            usage.prompt_tokens * self.input_usd_per_mtok
            + usage.completion_tokens * self.output_usd_per_mtok
        ) / 1e6


@runtime_checkable
class Expert(Protocol):
    info: ExpertInfo

    async def complete(self, messages: list[Message], params: GenerationParams) -> Completion:
        """Answer a chat in one piece."""
        ...

    def stream(self, messages: list[Message], params: GenerationParams) -> AsyncIterator[Delta]:
        """Answer a chat as deltas; the last delta carries finish_reason and usage."""
        ...

    async def aclose(self) -> None:
        """Release what the expert holds (model memory, connections)."""
        ...
