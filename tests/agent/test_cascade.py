"""Property tests of the cascade's two pure decisions (agent/cascade.py), checked against
the rules as the README states them, not against the implementation's own helpers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.cascade import CascadeRule, first_local, keep_local, local_first
from agent.policy import Decision

KINDS = {"qwen": "local", "smol": "local", "gpt4": "cloud", "mixtral": "cloud"}
prob = st.floats(0, 1, allow_nan=False)
scores_st = st.fixed_dictionaries({n: prob for n in KINDS})
band_st = st.floats(0, 1, allow_nan=False)


def _decision(expert: str, scores: dict[str, float], rejected: dict[str, str] | None = None,
              fallback_from: str | None = None) -> Decision:
    return Decision(expert, "highest utility", "profile", scores, fallback_from=fallback_from,
                    rejected=rejected or {})


@given(scores_st, band_st, st.sampled_from(["gpt4", "mixtral"]))
def test_tries_the_best_local_expert_exactly_when_within_the_band(scores, band, cloud):
    tried = local_first(_decision(cloud, scores), KINDS, band)
    best_local = max(scores["qwen"], scores["smol"])
    if best_local >= scores[cloud] - band:
        assert tried in ("qwen", "smol")
        assert scores[tried] == best_local
    else:
        assert tried is None


@given(scores_st, band_st, band_st, st.sampled_from(["gpt4", "mixtral"]))
def test_a_wider_band_tries_local_at_least_as_often(scores, b1, b2, cloud):
    lo, hi = sorted((b1, b2))
    if local_first(_decision(cloud, scores), KINDS, lo) is not None:
        assert local_first(_decision(cloud, scores), KINDS, hi) is not None


@given(scores_st, band_st, st.sampled_from(["qwen", "smol"]))
def test_never_when_the_policy_already_chose_a_local_expert(scores, band, local):
    assert local_first(_decision(local, scores), KINDS, band) is None


@given(scores_st, band_st)
def test_never_after_a_fallback_or_to_a_rejected_local_expert(scores, band):
    assert local_first(_decision("gpt4", scores, fallback_from="mixtral"), KINDS, band) is None
    both_rejected = {"qwen": "prompt of up to 3000 tokens", "smol": "unavailable"}
    assert local_first(_decision("gpt4", scores, both_rejected), KINDS, band) is None
    only_smol = local_first(_decision("gpt4", scores, {"qwen": "unavailable"}), KINDS, 1.0)
    assert only_smol == "smol"


@given(st.floats(-20, 0, allow_nan=False), st.floats(-20, 0, allow_nan=False),
       st.floats(-20, 0, allow_nan=False))
def test_keep_is_monotone_in_threshold_and_never_keeps_a_cut_off_answer(value, t1, t2):
    lo, hi = sorted((t1, t2))
    if keep_local(value, "stop", CascadeRule(0.1, hi)):
        assert keep_local(value, "stop", CascadeRule(0.1, lo))
    assert keep_local(value, "stop", CascadeRule(0.1, lo)) == (value >= lo)
    assert not keep_local(value, "length", CascadeRule(0.1, -1e9))
    assert not keep_local(None, "stop", CascadeRule(0.1, -1e9))


@given(scores_st, band_st, st.sampled_from(["gpt4", "mixtral"]))
def test_exactly_one_of_a_local_expert_or_a_reason_why_not(scores, band, cloud):
    """``routing.cascade.skipped``: the reason is given whenever no local expert is tried,
    and it is the band's when the band is what decided."""
    local, why = first_local(_decision(cloud, scores), KINDS, band)
    assert (local is None) != (why is None)
    if local is None:
        assert why == "outside the band"
        assert max(scores["qwen"], scores["smol"]) < scores[cloud] - band


def test_each_reason_for_not_trying_a_local_expert() -> None:
    scores = {"qwen": 0.5, "smol": 0.4, "gpt4": 0.9, "mixtral": 0.8}
    rejected = {"qwen": "does not support tools", "smol": "does not support tools"}
    cases = {
        "the policy chose a local expert": _decision("qwen", scores),
        "not chosen by utility": _decision("gpt4", scores, fallback_from="mixtral"),
        "no router score for the cloud expert": _decision("gpt4", {"qwen": 0.5}),
        "no local expert fits": _decision("gpt4", scores, rejected),
        "outside the band": _decision("gpt4", scores),
    }
    for why, decision in cases.items():
        assert first_local(decision, KINDS, 0.1) == (None, why)
    assert first_local(_decision("gpt4", scores), KINDS, 0.4) == ("qwen", None)
