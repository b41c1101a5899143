"""The cascade replayed on a table (export/cascade_sim.py), against a per-query loop written
here from the README's rule, on random matrices; and the validation choice."""

from __future__ import annotations

import numpy as np
import pytest

from agent.cascade import CascadeRule
from export import cascade_sim

EXPERTS = ["qwen", "smol", "gpt4"]  # two local, one cloud
COST = np.array([0.0, 0.0, 0.003])


def _matrix(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = (rng.random((n, 3)) < [0.3, 0.2, 0.8]).astype(float)
    q[rng.random(n) < 0.1, 2] = np.nan  # some queries without a cloud outcome
    lp = np.where(q[:, :2] > 0, rng.normal(-0.2, 0.1, (n, 2)), rng.normal(-0.8, 0.3, (n, 2)))
    values = {
        "mean_logprob": np.column_stack([lp, np.full(n, np.nan)]),
        "min_logprob": np.column_stack([lp * 5, np.full(n, np.nan)]),
        "cost_usd": np.column_stack([np.zeros((n, 2)), np.full(n, 0.003)]),
        "latency_s": np.column_stack([np.full((n, 2), 2.0), np.full(n, 1.0)]),
    }
    scores = np.clip(q * 0.5 + rng.random((n, 3)) * 0.5, 0, 1)
    return values, q, scores


def _by_hand(values, q, scores, v, rule):
    """Per query: route-only pick, then the cascade's two rules; (quality, cost) lists."""
    quality, cost = [], []
    for i in range(len(q)):
        avail = [j for j in range(3) if not np.isnan(q[i, j])]
        util = {j: scores[i, j] - (COST[j] / v if v else 0.0) for j in avail}
        pick = max(avail, key=lambda j: (util[j], -j))
        if rule is not None and COST[pick] > 0:
            locals_ = [j for j in avail if j < 2 and not np.isnan(values[rule.signal][i, j])]
            if locals_:
                best = max(locals_, key=lambda j: (scores[i, j], -j))
                within = scores[i, best] >= scores[i, pick] - rule.band
                if within and values[rule.signal][i, best] >= rule.threshold:
                    pick = best
        quality.append(q[i, pick])
        cost.append(values["cost_usd"][i, pick])
    return np.array(quality), np.array(cost)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rule", [None, CascadeRule(0.2, -0.4), CascadeRule(1.0, -0.1),
                                  CascadeRule(0.0, -5.0), CascadeRule(0.5, -2.0, "min_logprob")])
def test_replay_matches_the_rule_query_by_query(seed, rule):
    values, q, scores = _matrix(300, seed)
    got = cascade_sim.replay(values, q, scores, COST, 0.01, rule)
    quality, cost = _by_hand(values, q, scores, 0.01, rule)
    np.testing.assert_array_equal(got.quality, quality)
    np.testing.assert_allclose(got.cost, cost)


def test_a_threshold_above_every_confidence_is_route_only_plus_the_local_attempts_latency():
    values, q, scores = _matrix(300, 3)
    base = cascade_sim.replay(values, q, scores, COST, 0.01, None)
    never = cascade_sim.replay(values, q, scores, COST, 0.01, CascadeRule(1.0, 0.5))
    np.testing.assert_array_equal(never.answered, base.answered)
    assert not never.kept.any() and never.attempted.any()
    np.testing.assert_allclose(never.latency - base.latency, np.where(never.attempted, 2.0, 0))


def test_validation_choice_and_the_equal_spend_comparison():
    values, q, scores = _matrix(400, 4)
    chosen = cascade_sim.choose(values, q, scores, COST, 0.01)
    # on these matrices the best rule is at least as good as route-only on its own queries
    assert chosen["utility"] >= chosen["route_only_utility"] - 1e-12
    rule = CascadeRule(**chosen["rule"])
    from export.scoring import VALUES

    res = cascade_sim.compare(values, q, scores, COST, 0.01, rule, VALUES)
    assert res["route_only_equal_spend"]["cost_usd"] <= res["cascade"]["cost_usd"] + 1e-12
    lo, hi = res["diff_ci95"]
    assert lo <= res["diff_quality"] <= hi
    # On these matrices a confident local answer is usually right: the cascade spends less.
    assert res["cascade"]["cost_usd"] < res["route_only_same_v"]["cost_usd"]


def test_no_confidence_in_the_table_is_a_clear_error():
    values, q, scores = _matrix(50, 5)
    values["mean_logprob"][:] = np.nan
    values["min_logprob"][:] = np.nan
    with pytest.raises(ValueError, match="edgeroute table confidence"):
        cascade_sim.choose(values, q, scores, COST, 0.01)
