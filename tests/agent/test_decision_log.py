"""The recent decisions (agent/decision_log.py): shares over the router's choices, served
and route-only apart, the gain a never-chosen expert lacked, and the ring's bound."""

from __future__ import annotations

import pytest

from agent.decision_log import DecisionLog
from agent.policy import ExpertState, Request, Weights, decide
from cloud_bridge.usage import Prices

EXPERTS = {"local": ExpertState("local", "local", expected_output_tokens=50),
           "cloud": ExpertState("cloud", "cloud", Prices(10, 30), expected_output_tokens=50)}


def _decision(p_local: float, p_cloud: float, requested: str | None = None):
    return decide({"local": p_local, "cloud": p_cloud}, EXPERTS,
                  Request(requested, 200, 256, expected_prompt_tokens=50),
                  weights=Weights(1.0, 0.01), default_expert="local", mode="profile")


def test_shares_count_the_routers_choices_and_keep_route_calls_apart() -> None:
    log = DecisionLog()
    for _ in range(3):
        log.record(_decision(0.2, 0.9), served=True, auto=True)  # cloud: 0.9 - 0.2 > 0.2
    log.record(_decision(0.5, 0.6), served=True, auto=True)  # local
    log.record(_decision(0.5, 0.6, requested="cloud"), served=True, auto=False)  # named
    for _ in range(4):
        log.record(_decision(0.5, 0.6), served=False, auto=True)  # route-only, local
    n, shares = log.shares(["local", "cloud"])
    assert n == 4 and shares == {"local": 0.25, "cloud": 0.75}
    n, shares = log.shares(["local", "cloud"], served=False)
    assert n == 4 and shares == {"local": 1.0, "cloud": 0.0}
    n, _ = log.shares(["local", "cloud"], served=None)
    assert n == 8
    assert log.shares(["local", "cloud"], last=1)[1] == {"local": 1.0, "cloud": 0.0}


def test_the_gain_a_never_chosen_expert_would_need() -> None:
    """Each request costs the cloud 50 + 50 tokens at $10 / $30: $0.002, that is 0.2 of a
    correct answer at $0.01 a correct answer; so it needs a P(correct) gain of 0.2 over
    the local expert's, and the median over decisions is reported."""
    log = DecisionLog()
    for p_local, p_cloud in ((0.5, 0.5), (0.6, 0.5), (0.7, 0.5)):
        log.record(_decision(p_local, p_cloud), served=True, auto=True)
    assert log.shares(["local", "cloud"])[1]["cloud"] == 0.0
    assert log.gain_needed("cloud") == pytest.approx(0.1 + 0.2)  # median of 0.2, 0.3, 0.4
    assert log.gain_needed("local") is None  # never passed over
    assert log.mean_cost("cloud") == pytest.approx(0.002)
    assert log.mean_cost("local") == 0.0


def test_the_ring_keeps_the_newest() -> None:
    log = DecisionLog(capacity=5)
    for i in range(12):
        log.record(_decision(0.5, 0.6), served=True, auto=True, now=float(i))
    recs = log.records()
    assert [r.at for r in recs] == [7.0, 8.0, 9.0, 10.0, 11.0]
    assert [r.id for r in recs] == [8, 9, 10, 11, 12]


def test_query_text_is_kept_only_when_the_log_keeps_text() -> None:
    """server.dashboard_prompts sets ``text_chars``; off, no prompt text is ever stored."""
    off, on = DecisionLog(), DecisionLog(text_chars=5)
    assert off.record(_decision(0.5, 0.6), served=True, auto=True,
                      text="secret prompt").query is None
    assert on.record(_decision(0.5, 0.6), served=True, auto=True,
                     text="secret prompt").query == "secre"
