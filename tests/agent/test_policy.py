"""Property tests of the pure decision core (agent/policy.py)."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from agent.policy import ExpertState, Request, Weights, decide, why_infeasible

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
            input_usd_per_mtok=0.0 if local else draw(price),
            output_usd_per_mtok=0.0 if local else draw(price),
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
weights_st = st.builds(Weights, st.floats(0, 5), st.floats(0, 5), st.floats(0, 5))


@given(scores_st, experts_st(), request_st, weights_st, st.sampled_from(["onnx", "fixed"]))
def test_never_picks_an_expert_over_a_hard_limit(scores, experts, req, w, mode) -> None:
    assume(req.requested is None or req.requested in experts)
    d = decide(scores, experts, req, weights=w, default_expert=next(iter(experts)), mode=mode)
    if d.refused:
        assert all(why_infeasible(e, req) for e in experts.values())
        assert d.reason.startswith("no expert fits")
        return
    chosen = experts[d.expert]
    assert why_infeasible(chosen, req) is None
    cost = chosen.worst_case_usd(req.prompt_tokens, req.max_tokens)
    if req.max_cost_usd is not None:
        assert cost <= req.max_cost_usd
    if chosen.remaining_usd is not None:
        assert cost <= chosen.remaining_usd
    assert d.reason


@given(scores_st, experts_st(), request_st, st.floats(0, 5), st.floats(0, 5), st.floats(0, 5))
def test_chosen_cost_is_monotone_in_the_cost_weight(scores, experts, req, wq, w1, w2) -> None:
    req = Request(None, req.prompt_tokens, req.max_tokens, req.max_cost_usd, req.max_latency_ms)
    lo, hi = sorted((w1, w2))
    default = next(iter(experts))
    a = decide(scores, experts, req, weights=Weights(wq, lo, 0), default_expert=default,
               mode="onnx")
    b = decide(scores, experts, req, weights=Weights(wq, hi, 0), default_expert=default,
               mode="onnx")
    assert a.refused == b.refused
    if not a.refused:
        assert b.expected_cost_usd <= a.expected_cost_usd + 1e-12


@given(scores_st, experts_st(), request_st)
def test_quality_only_picks_the_best_scored_feasible_expert(scores, experts, req) -> None:
    req = Request(None, req.prompt_tokens, req.max_tokens, req.max_cost_usd, req.max_latency_ms)
    d = decide(scores, experts, req, default_expert=next(iter(experts)), mode="onnx")
    feasible = [n for n, e in experts.items() if why_infeasible(e, req) is None]
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
        "gpt": ExpertState("gpt", "cloud", 10.0, 30.0, remaining_usd=0.0),
    }
    d = decide({}, experts, Request("gpt", 100, 100), default_expert="local", mode="fixed")
    assert d.expert == "local" and d.fallback_from == "gpt"
    assert "budget left" in d.reason


def test_fixed_mode_uses_default_expert() -> None:
    experts = {"a": ExpertState("a", "local"), "b": ExpertState("b", "local")}
    d = decide({"a": 0.0, "b": 1.0}, experts, Request(None, 10, 10), default_expert="a",
               mode="fixed")
    assert d.expert == "a"
