"""The expert interface: one ``complete`` and one ``stream``, local or cloud alike.

The call vocabulary belongs to ``cloud_bridge`` (sampling parameters, token usage with
its ``estimated`` flag, prices, whole answers and streamed pieces): a local expert
answers in the same types, so nothing is translated between the two kinds of expert.
What an expert is, without calling it, is :class:`agent.experts.info.ExpertInfo`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from agent.experts.info import ExpertInfo
from cloud_bridge.messages import Message
from cloud_bridge.wire import ChatResult, SamplingParams, StreamPiece

__all__ = ["Expert", "Message"]


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
