"""The router slot: something that scores every expert for a query.

A router is one method, ``score(text) -> Scoring``: every expert's score (higher is
better, a probability-like vector), and, from an ability-profile router, the query's
features ``u(q), d(q)`` and each expert's answer-length model (``agent.answer_length``),
read from one router so that a decision never mixes two bundles across a reload. Until a
trained bundle is configured the daemon runs ``FixedRouter``: a documented mode in which
every query goes to the default expert, said so in ``/health`` and in each reply's
``routing`` info. It is not a fake classifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from agent.answer_length import LengthModel
from cloud_bridge.messages import Message, message_text


@dataclass(frozen=True)
class QueryFeatures:
    """An ability-profile router's view of one query: its vector and difficulty."""

    u: tuple[float, ...]
    d: float
    encoder: str = ""  # the query tower's id (a bundle's encoder_id): the space u lives in


@dataclass(frozen=True)
class Scoring:
    """A router's answer for one query."""

    scores: dict[str, float]
    features: QueryFeatures | None = None  # None: a classifier or fixed router
    lengths: Mapping[str, LengthModel | None] = field(default_factory=dict)


@runtime_checkable
class Router(Protocol):
    @property
    def mode(self) -> str:
        """'fixed', 'onnx' (a classifier bundle) or 'profile' (ability profiles): reported
        in /health and in every decision."""
        ...

    @property
    def experts(self) -> tuple[str, ...]:
        """The experts scored, in label order."""
        ...

    def score(self, text: str) -> Scoring:
        """Score every expert in ``experts`` for one query."""
        ...

    @property
    def lengths(self) -> Mapping[str, LengthModel | None]:
        """Each expert's answer-length model (empty: none known)."""
        ...

    def scores(self, text: str) -> dict[str, float]:
        """``score(text).scores``."""
        ...

    def describe(self) -> dict[str, Any]:
        """What /health reports about this router."""
        ...

    def swap(self) -> object:
        """Re-read the bundle from its path and switch to it atomically; raises
        ``agent.errors.BundleError`` (the old router keeps serving) when it cannot."""
        ...


class FixedRouter:
    """No trained router: every query scores 1.0 for the default expert, 0.0 for others."""

    mode = "fixed"

    def __init__(self, experts: list[str], default_expert: str) -> None:
        if default_expert not in experts:
            raise ValueError(f"default expert {default_expert!r} not in {experts}")
        self.experts = tuple(experts)
        self.default_expert = default_expert
        self.note = "router disabled (router.bundle=none): every query goes to the default expert"
        self.lengths: Mapping[str, LengthModel | None] = {}

    def scores(self, text: str) -> dict[str, float]:
        return {e: (1.0 if e == self.default_expert else 0.0) for e in self.experts}

    def score(self, text: str) -> Scoring:
        return Scoring(self.scores(text))

    def swap(self) -> object:
        from agent.errors import BundleError

        raise BundleError("no router bundle is loaded (fixed mode); nothing to reload")

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "default_expert": self.default_expert,
            "note": self.note,
        }


def query_text(messages: list[Message]) -> str:
    """The text a router scores: the last user turn (the paper routes single queries)."""
    for m in reversed(messages):
        if m.get("role") == "user":
            return message_text(m)
    return message_text(messages[-1]) if messages else ""
