"""Property tests of the pure decision core."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.policy import decide

names = st.sampled_from(["a", "b", "c", "d", "e"])
scores_st = st.dictionaries(names, st.floats(0, 1, allow_nan=False), min_size=1)


@given(scores_st, st.frozensets(names, min_size=1), names)
def test_auto_picks_the_best_available_expert(scores, available, default) -> None:
    d = decide(scores, available, requested=None, default_expert=default, mode="onnx")
    candidates = {e: s for e, s in scores.items() if e in available}
    if candidates:
        assert d.expert in available
        assert scores[d.expert] == max(candidates.values())
    else:
        assert d.expert == default


@given(scores_st, st.frozensets(names, min_size=1), names, names)
def test_requested_expert_wins_when_available(scores, available, requested, default) -> None:
    d = decide(scores, available, requested=requested, default_expert=default, mode="onnx")
    if requested in available:
        assert d.expert == requested and d.fallback_from is None
    else:
        assert d.expert == default and d.fallback_from == requested


@given(scores_st, st.frozensets(names, min_size=1), names)
def test_decision_is_deterministic_and_explained(scores, available, default) -> None:
    a = decide(scores, available, requested=None, default_expert=default, mode="onnx")
    b = decide(dict(reversed(list(scores.items()))), available, requested=None,
               default_expert=default, mode="onnx")
    assert a.expert == b.expert
    assert a.reason
