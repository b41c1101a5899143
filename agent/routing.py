"""The router slot: something that scores every expert for a query.

A router is one method, ``scores(text) -> {expert: score}`` (higher is better, the scores a
probability-like vector). Until a trained bundle is configured the daemon runs
``FixedRouter``: a documented mode in which every query goes to the default expert, said
so in ``/health`` and in each reply's ``routing`` info. It is not a fake classifier.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from cloud_bridge.messages import Message, message_text


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

    def scores(self, text: str) -> dict[str, float]:
        """Score every expert in ``experts`` for one query."""
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

    def scores(self, text: str) -> dict[str, float]:
        return {e: (1.0 if e == self.default_expert else 0.0) for e in self.experts}

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
