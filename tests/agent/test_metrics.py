"""Decisions are labelled for /metrics from their fields, never from their reason text."""

from __future__ import annotations

from agent.metrics import decision_kind
from agent.policy import REFUSED, Decision


def test_kinds_come_from_fields() -> None:
    assert decision_kind(Decision("a", "anything", "router"), None, "a") == "router"
    assert decision_kind(Decision("a", "x", "router"), "a", "a") == "requested"
    assert decision_kind(Decision("b", "x", "router", fallback_from="a"), "a", "b") == (
        "requested")  # the client named an expert that could not take it
    assert decision_kind(Decision("a", "x", "fixed"), None, "a") == "fixed"
    assert decision_kind(Decision("b", "x", "fixed"), None, "a") == "budget"
    assert decision_kind(Decision("b", "x", "router", fallback_from="a"), None, "b") == (
        "fallback")
    assert decision_kind(Decision(REFUSED, "x", "router"), None, "a") == "refused"
