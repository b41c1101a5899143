"""Property tests of the pure decision core (agent/policy.py).

Feasibility is checked against :func:`fits`, written here from the README's rules, never
against the implementation's own ``why_infeasible``.
"""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from agent.policy import ExpertState, Request, Weights, decide
from cloud_bridge.usage import Prices

NAMES = ["local-a", "local-b", "cloud-x", "cloud-y", "cloud-z"]
price = st.floats(0, 50, allow_nan=False)
maybe_money = st.one_of(st.none(), st.floats(0, 0.05, allow_nan=False))


@st.composite
def experts_st(draw):
    out = {}
    for n in draw(st.lists(st.sampled_from(NAMES), min_size=1, unique=True)):
        local = n.startswith("local")
        out[n] = ExpertState(
            name=n, kind="local" if local else "cloud",
            prices=Prices() if local else Prices(draw(price), draw(price)),
            available=draw(st.booleans()),
            latency_s=draw(st.one_of(st.none(), st.floats(0.01, 20))),
            remaining_usd=None if local else draw(maybe_money),
        )
    return out


scores_st = st.dictionaries(st.sampled_from(NAMES), st.floats(0, 1, allow_nan=False))
request_st = st.builds(
    Request,
    requested=st.one_of(st.none(), st.sampled_from(NAMES)),
    prompt_tokens=st.integers(1, 5000),
    max_tokens=st.integers(1, 4096),
    max_cost_usd=maybe_money,
    max_latency_ms=st.one_of(st.none(), st.floats(10, 30000)),
)
weights_st = st.builds(Weights, st.floats(0, 5), st.one_of(st.none(), st.floats(1e-6, 10)),
                       st.floats(0, 5))


def worst_case_usd(e: ExpertState, req: Request) -> float:
    """The most the request can cost on ``e``: the prompt at the input price plus every
    allowed output token at the output price (prices per million tokens)."""
    return (req.prompt_tokens * e.prices.input_usd_per_mtok
            + req.max_tokens * e.prices.output_usd_per_mtok) / 1e6


def fits(e: ExpertState, req: Request) -> bool:
    """The README's hard limits: the expert is available; its worst case is within the
    request's cost limit and within the budget left; its latency estimate (when it has
    one) is within the request's latency limit."""
    cost = worst_case_usd(e, req)
    return (
        e.available
        and (req.max_cost_usd is None or cost <= req.max_cost_usd)
        and (e.remaining_usd is None or cost <= e.remaining_usd)
        and (req.max_latency_ms is None or e.latency_s is None
             or e.latency_s * 1000 <= req.max_latency_ms)
    )


@given(scores_st, experts_st(), request_st, weights_st, st.sampled_from(["onnx", "fixed"]))
def test_never_picks_an_expert_over_a_hard_limit(scores, experts, req, w, mode) -> None:
    assume(req.requested is None or req.requested in experts)
    d = decide(scores, experts, req, weights=w, default_expert=next(iter(experts)), mode=mode)
    # Refused exactly when no expert fits.
    assert d.refused == (not any(fits(e, req) for e in experts.values()))
    if d.refused:
        assert d.reason.startswith("no expert fits")
        return
    chosen = experts[d.expert]
    assert fits(chosen, req)
    if req.requested is not None and fits(experts[req.requested], req):
        assert d.expert == req.requested  # a named expert that fits is honoured
    assert d.reason


@given(scores_st, experts_st(), request_st, st.floats(0.01, 5), st.floats(1e-6, 10),
       st.floats(1e-6, 10))
def test_chosen_cost_rises_with_what_a_correct_answer_is_worth(scores, experts, req, wq, v1,
                                                               v2) -> None:
    req = Request(None, req.prompt_tokens, req.max_tokens, req.max_cost_usd, req.max_latency_ms)
    lo, hi = sorted((v1, v2))
    default = next(iter(experts))
    a = decide(scores, experts, req, weights=Weights(wq, lo, 0), default_expert=default,
               mode="onnx")
    b = decide(scores, experts, req, weights=Weights(wq, hi, 0), default_expert=default,
               mode="onnx")
    assert a.refused == b.refused
    if not a.refused:
        assert b.expected_cost_usd >= a.expected_cost_usd - 1e-12


def test_utility_counts_cost_in_correct_answers() -> None:
    from agent.policy import utility

    # worth $0.02 a correct answer: $0.01 more must buy 0.5 more P(correct)
    assert utility(0.9, 0.01, 0.02) == pytest.approx(0.4)
    assert utility(0.4, 0.0, 0.02) == pytest.approx(0.4)
    assert utility(0.9, 0.01, None) == pytest.approx(0.9)  # cost not weighed
    import numpy as np

    assert np.allclose(utility(np.array([0.9, 0.4]), np.array([0.01, 0.0]), 0.02), [0.4, 0.4])


def test_a_cheap_expert_wins_unless_the_dear_one_is_worth_its_price() -> None:
    experts = {"local": ExpertState("local", "local"),
               "cloud": ExpertState("cloud", "cloud", Prices(10, 30))}
    req = Request(None, prompt_tokens=1000, max_tokens=100)  # cloud costs $0.013
    scores = {"local": 0.3, "cloud": 0.9}
    pick = lambda v: decide(scores, experts, req, weights=Weights(1.0, v, 0),  # noqa: E731
                            default_expert="local", mode="profile").expert
    assert pick(0.01) == "local"  # 0.9 - 1.3 < 0.3
    assert pick(0.05) == "cloud"  # 0.9 - 0.26 > 0.3
    assert pick(None) == "cloud"


@given(scores_st, experts_st(), request_st)
def test_quality_only_picks_the_best_scored_feasible_expert(scores, experts, req) -> None:
    req = Request(None, req.prompt_tokens, req.max_tokens, req.max_cost_usd, req.max_latency_ms)
    d = decide(scores, experts, req, default_expert=next(iter(experts)), mode="onnx")
    feasible = [n for n, e in experts.items() if fits(e, req)]
    if feasible:
        assert scores.get(d.expert, 0.0) == max(scores.get(n, 0.0) for n in feasible)


@given(experts_st(), request_st, weights_st)
def test_a_request_limit_only_tightens(experts, req, w) -> None:
    """Adding a request limit can never make a refused request pass or raise the cost."""
    req = Request(None, req.prompt_tokens, req.max_tokens, None, None)
    loose = decide({}, experts, req, weights=w, default_expert=next(iter(experts)), mode="onnx")
    tight_req = Request(None, req.prompt_tokens, req.max_tokens, 0.0, None)
    tight = decide({}, experts, tight_req, weights=w, default_expert=next(iter(experts)),
                   mode="onnx")
    if loose.refused:
        assert tight.refused
    if not tight.refused:
        assert tight.expected_cost_usd == 0.0


def test_requested_cloud_over_budget_goes_to_best_fit() -> None:
    experts = {
        "local": ExpertState("local", "local"),
        "gpt": ExpertState("gpt", "cloud", Prices(10.0, 30.0), remaining_usd=0.0),
    }
    d = decide({}, experts, Request("gpt", 100, 100), default_expert="local", mode="fixed")
    assert d.expert == "local" and d.fallback_from == "gpt"
    assert "budget left" in d.reason


def test_fixed_mode_uses_default_expert() -> None:
    experts = {"a": ExpertState("a", "local"), "b": ExpertState("b", "local")}
    d = decide({"a": 0.0, "b": 1.0}, experts, Request(None, 10, 10), default_expert="a",
               mode="fixed")
    assert d.expert == "a"


@pytest.mark.parametrize(
    ("limit", "ok"), [(None, True), (0.004, True), (0.0039, False), (0.0, False)]
)
def test_request_cost_limit_is_inclusive_at_the_worst_case(limit, ok) -> None:
    """100 prompt tokens at $10/M plus 100 output tokens at $30/M: $0.004 at worst."""
    experts = {"gpt": ExpertState("gpt", "cloud", Prices(10.0, 30.0))}
    d = decide({}, experts, Request(None, 100, 100, max_cost_usd=limit),
               default_expert="gpt", mode="onnx")
    assert d.refused is not ok
    assert d.expert == ("gpt" if ok else "")


def test_unavailable_too_slow_and_over_budget_experts_are_skipped() -> None:
    experts = {
        "down": ExpertState("down", "cloud", available=False),
        "slow": ExpertState("slow", "local", latency_s=1.001),
        "at-limit": ExpertState("at-limit", "local", latency_s=1.0),
        "broke": ExpertState("broke", "cloud", Prices(1.0, 1.0), remaining_usd=0.0),
        "ok": ExpertState("ok", "local", latency_s=0.5),
    }
    scores = {"down": 0.9, "slow": 0.8, "broke": 0.7, "at-limit": 0.2, "ok": 0.1}
    d = decide(scores, experts, Request(None, 10, 10, max_latency_ms=1000),
               default_expert="down", mode="onnx")
    assert d.expert == "at-limit"  # a latency estimate equal to the limit fits
    assert set(d.rejected) == {"down", "slow", "broke"}


@given(scores_st, experts_st(), request_st, st.floats(0, 1), st.floats(0, 1))
def test_a_larger_local_margin_only_keeps_the_default(scores, experts, req, m1, m2) -> None:
    """Raising local_margin can move a decision onto the default expert, never off it."""
    req = Request(None, req.prompt_tokens, req.max_tokens, req.max_cost_usd, req.max_latency_ms)
    lo, hi = sorted((m1, m2))
    default = next(iter(experts))
    a, b = (decide(scores, experts, req, weights=Weights(1.0, 0.01, 0.0, m),
                   default_expert=default, mode="profile") for m in (lo, hi))
    assert a.refused == b.refused
    if a.expert == default:
        assert b.expert == default
    if b.expert != a.expert and not b.refused:
        assert b.expert == default or experts[b.expert].kind == "cloud"


@given(st.dictionaries(st.sampled_from(["local-a", "local-b", "local-c"]),
                       st.floats(0, 1, allow_nan=False), min_size=3, max_size=3),
       st.floats(0, 1))
def test_between_local_experts_another_must_beat_the_default_by_the_margin(scores, margin):
    """Written from the README's rule: a local expert other than the default is chosen
    only when its P(correct) exceeds the default's by more than local_margin, and then
    the best scored one."""
    experts = {n: ExpertState(n, "local") for n in ("local-a", "local-b", "local-c")}
    d = decide(scores, experts, Request(None, 10, 10), default_expert="local-a",
               weights=Weights(local_margin=margin), mode="profile")
    best_other = max(scores["local-b"], scores["local-c"])
    if best_other > scores["local-a"] + margin + 1e-9:
        assert d.expert != "local-a" and scores[d.expert] == best_other
    elif best_other < scores["local-a"] + margin - 1e-9:
        assert d.expert == "local-a"


def test_the_margin_is_said_when_it_keeps_the_default_and_spares_the_cloud() -> None:
    experts = {"qwen": ExpertState("qwen", "local"), "smol": ExpertState("smol", "local"),
               "gpt": ExpertState("gpt", "cloud", Prices(1.0, 1.0))}
    req = Request(None, 100, 100)
    w = Weights(local_margin=0.1)
    kept = decide({"qwen": 0.30, "smol": 0.35, "gpt": 0.0}, experts, req, weights=w,
                  default_expert="qwen", mode="profile")
    assert kept.expert == "qwen" and "smol gains less than local_margin 0.1" in kept.reason
    assert decide({"qwen": 0.30, "smol": 0.45, "gpt": 0.0}, experts, req, weights=w,
                  default_expert="qwen", mode="profile").expert == "smol"
    # the cloud is weighed by its cost, not the margin: 0.35 > 0.30 wins at once
    assert decide({"qwen": 0.30, "smol": 0.0, "gpt": 0.35}, experts, req, weights=w,
                  default_expert="qwen", mode="profile").expert == "gpt"
    # a cloud default makes no local expert sticky
    assert decide({"qwen": 0.30, "smol": 0.35, "gpt": 0.0}, experts, req, weights=w,
                  default_expert="gpt", mode="profile").expert == "smol"


# -- what the utility weighs: the expected answer, not max_tokens ---------------------------
def expected_usd(e: ExpertState, req: Request) -> float:
    """README: a typical count of the prompt plus the answer the expert is expected to give
    (never more than max_tokens), at its prices; budgets still reserve the worst case."""
    out = req.max_tokens if e.expected_output_tokens is None else min(
        req.max_tokens, e.expected_output_tokens)
    typical = req.expected_prompt_tokens or req.prompt_tokens
    return (typical * e.prices.input_usd_per_mtok + out * e.prices.output_usd_per_mtok) / 1e6


@st.composite
def priced_experts_st(draw):
    """Experts with an expected answer length, no budget, always available."""
    out = {}
    for n in draw(st.lists(st.sampled_from(NAMES), min_size=1, unique=True)):
        local = n.startswith("local")
        out[n] = ExpertState(n, "local" if local else "cloud",
                             Prices() if local else Prices(draw(price), draw(price)),
                             expected_output_tokens=draw(st.floats(0, 400)))
    return out


@given(scores_st, priced_experts_st(), st.integers(1, 3000), st.integers(0, 2000),
       st.integers(400, 4096), st.integers(400, 4096), st.floats(1e-4, 1))
def test_max_tokens_above_the_expected_answers_changes_no_choice(scores, experts, bound,
                                                                 typical, m1, m2, v) -> None:
    """The defect this policy had (README): every answer was priced at max_tokens, so a
    request's max_tokens, not the answer it would get, chose between local and cloud. With
    every expert's expected answer shorter than both, the choice is the same for both."""
    typical = min(typical, bound)
    a, b = (decide(scores, experts, Request(None, bound, m, expected_prompt_tokens=typical),
                   weights=Weights(1.0, v), default_expert=next(iter(experts)),
                   mode="profile") for m in (m1, m2))
    assert a.expert == b.expert
    assert a.expected_cost_usd == pytest.approx(b.expected_cost_usd, rel=1e-9, abs=1e-15)


@given(scores_st, priced_experts_st(), st.integers(1, 3000), st.integers(0, 3000),
       st.integers(1, 4096), st.one_of(st.none(), st.floats(1e-4, 1)))
def test_each_expert_is_priced_as_the_readme_says(scores, experts, bound, typical, m,
                                                  v) -> None:
    """Every expert's expected cost in ``routing.experts`` is the README's formula, never
    above what a budget reserves for it, and the chosen one is the best utility."""
    req = Request(None, bound, m, expected_prompt_tokens=min(typical, bound) or None)
    d = decide(scores, experts, req, weights=Weights(1.0, v),
               default_expert=next(iter(experts)), mode="profile")
    for n, e in experts.items():
        a = d.assessed[n]
        assert a.expected_cost_usd == pytest.approx(expected_usd(e, req), rel=1e-9, abs=1e-15)
        assert a.expected_cost_usd <= a.worst_case_usd + 1e-15
        assert a.worst_case_usd == pytest.approx(worst_case_usd(e, req), rel=1e-9, abs=1e-15)
    best = max(a.utility for a in d.assessed.values() if a.utility is not None)
    assert d.assessed[d.expert].utility == pytest.approx(best)
    assert d.expected_cost_usd == d.assessed[d.expert].expected_cost_usd
