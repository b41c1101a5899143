"""The local-first cascade (``agent.cascade``) replayed on an expert table: what it would
have answered and spent, beside route-only and always-cloud.

Per query, as the daemon does it: the route-only choice is ``argmax utility(P, cost, V)``
over the experts with an outcome (``agent.policy.utility``; cost what the daemon expects
the query to cost on each expert, ``export.daemon_policy``: queries x experts). When that
choice is a cloud expert and the best local expert (by P, among those whose answer has a
recorded confidence) is within ``band`` of it
(``agent.cascade.local_first``), the local answer is tried: kept when its confidence
(``mean_logprob`` or ``min_logprob``, see ``export/table.py``) is at least ``threshold``
(``agent.cascade.keep_local``), else the cloud expert answers. A kept answer costs nothing;
an escalated one costs the cloud call and adds the local attempt's latency.

Band and threshold are chosen on the validation split (``choose``), reported on test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.cascade import SIGNALS, CascadeRule
from agent.policy import utility
from export.scoring import paired_ci

BANDS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
THRESHOLD_QUANTILES = tuple(np.linspace(0.0, 1.0, 21))


@dataclass(frozen=True)
class Outcome:
    """Per query: the expert that answered, whether a local answer was tried and kept."""

    answered: np.ndarray  # int, expert index
    attempted: np.ndarray  # bool
    kept: np.ndarray  # bool
    quality: np.ndarray  # float, NaN where unknown
    cost: np.ndarray  # USD
    latency: np.ndarray  # s, the local attempt's included when escalated


def local_experts(values: dict[str, np.ndarray]) -> np.ndarray:
    """Experts with a recorded confidence on any row: the local ones."""
    return np.asarray(~np.isnan(values["mean_logprob"]).all(axis=0))


def priced(cost: np.ndarray) -> np.ndarray:
    """The experts that cost anything (cloud): any query's expected cost above 0."""
    return np.asarray((np.atleast_2d(cost) > 0).any(axis=0))


def route(scores: np.ndarray, cost: np.ndarray, avail: np.ndarray,
          usd_per_correct: float | None) -> np.ndarray:
    """The route-only choice per query (index into the experts)."""
    u = np.asarray(utility(scores, cost, usd_per_correct), dtype=float)
    return np.asarray(np.where(avail, u, -np.inf).argmax(axis=1))


def replay(values: dict[str, np.ndarray], q: np.ndarray, scores: np.ndarray,
           cost: np.ndarray, usd_per_correct: float | None,
           rule: CascadeRule | None) -> Outcome:
    """Route-only (``rule=None``) or the cascade, query by query."""
    n = len(q)
    rows = np.arange(n)
    avail = ~np.isnan(q)
    choice = route(scores, cost, avail, usd_per_correct)
    answered = choice.copy()
    attempted = np.zeros(n, dtype=bool)
    kept = np.zeros(n, dtype=bool)
    latency = np.nan_to_num(values["latency_s"][rows, choice])
    if rule is not None:
        signal = values[rule.signal]
        local = local_experts(values)
        cloud = priced(cost)[choice]
        ok = avail & local[None, :] & ~np.isnan(signal)
        s_local = np.where(ok, scores, -np.inf)
        best = s_local.argmax(axis=1)
        has = np.isfinite(s_local[rows, best])
        attempted = cloud & has & (scores[rows, best] >= scores[rows, choice] - rule.band)
        with np.errstate(invalid="ignore"):
            kept = attempted & (signal[rows, best] >= rule.threshold)
        answered = np.where(kept, best, choice)
        local_lat = np.nan_to_num(values["latency_s"][rows, best])
        latency = np.where(kept, local_lat,
                           latency + np.where(attempted, local_lat, 0.0))
    spent = np.nan_to_num(values["cost_usd"][rows, answered])
    return Outcome(answered, attempted, kept, q[rows, answered], spent, latency)


def summary(o: Outcome, cloud: np.ndarray) -> dict[str, Any]:
    good = ~np.isnan(o.quality)
    return {
        "quality": float(o.quality[good].mean()) if good.any() else None,
        "cost_usd": float(o.cost.mean()),
        "cloud_share": float(cloud[o.answered].mean()),
        "attempted_share": float(o.attempted.mean()),
        "kept_share": float(o.kept.mean()),
        "escalated_share": float((o.attempted & ~o.kept).mean()),
        "mean_latency_s": float(o.latency.mean()),
        "queries": len(o.quality),
    }


def thresholds(values: dict[str, np.ndarray], signal: str) -> list[float]:
    """Candidate thresholds: quantiles of the local answers' confidence."""
    x = values[signal][~np.isnan(values[signal])]
    if x.size == 0:
        return []
    return sorted({round(float(np.quantile(x, p)), 4) for p in THRESHOLD_QUANTILES})


def choose(values: dict[str, np.ndarray], q: np.ndarray, scores: np.ndarray,
           cost: np.ndarray, usd_per_correct: float | None) -> dict[str, Any]:
    """The (signal, band, threshold) with the highest mean utility on these (validation)
    queries; ties: fewer cloud calls, then the narrower band. Also route-only's figure."""
    cloud = priced(cost)
    v = usd_per_correct

    def value(o: Outcome) -> float:
        good = ~np.isnan(o.quality)
        qual = float(o.quality[good].mean()) if good.any() else 0.0
        return qual - (float(o.cost.mean()) / v if v else 0.0)

    base = replay(values, q, scores, cost, v, None)
    best: tuple[tuple[float, float, float], CascadeRule] | None = None
    for signal in SIGNALS:
        for t in thresholds(values, signal):
            for band in BANDS:
                rule = CascadeRule(band, t, signal)  # type: ignore[arg-type]
                o = replay(values, q, scores, cost, v, rule)
                key = (round(value(o), 9), -float(cloud[o.answered].mean()), -band)
                if best is None or key > best[0]:
                    best = (key, rule)
    if best is None:
        raise ValueError("no local answer has a recorded confidence (mean_logprob); run "
                         "`edgeroute table confidence` on the table first")
    rule = best[1]
    return {"rule": {"band": rule.band, "threshold": rule.threshold, "signal": rule.signal},
            "utility": best[0][0], "route_only_utility": value(base),
            "cascade": summary(replay(values, q, scores, cost, v, rule), cloud),
            "route_only": summary(base, cloud)}


def compare(values: dict[str, np.ndarray], q: np.ndarray, scores: np.ndarray,
            cost: np.ndarray, usd_per_correct: float | None, rule: CascadeRule,
            sweep: tuple[float | None, ...]) -> dict[str, Any]:
    """The cascade at ``rule`` against route-only at the same cloud spend: the route-only
    V whose spend on these queries is closest to the cascade's without exceeding it
    (matched on cost alone, no labels), per-query paired difference and its bootstrap
    interval. Plus both curves (route-only over V; the cascade over thresholds at the
    rule's band) and always-cloud points."""
    cloud = priced(cost)
    casc = replay(values, q, scores, cost, usd_per_correct, rule)
    spend = float(casc.cost.mean())
    routes = [(v, replay(values, q, scores, cost, v, None)) for v in sweep]
    under = [(v, o) for v, o in routes if float(o.cost.mean()) <= spend + 1e-12]
    v_eq, o_eq = max(under, key=lambda vo: float(vo[1].cost.mean())) if under else routes[0]
    diff = casc.quality - o_eq.quality
    curve_route = [{"usd_per_correct": v, **summary(o, cloud)} for v, o in routes]
    curve_cascade = []
    for t in thresholds(values, rule.signal):
        r = CascadeRule(rule.band, t, rule.signal)
        curve_cascade.append({"threshold": t, **summary(
            replay(values, q, scores, cost, usd_per_correct, r), cloud)})
    always = {}
    for j in np.flatnonzero(cloud):
        have = ~np.isnan(q[:, j])
        always[int(j)] = {"quality_on_its_queries": float(q[have, j].mean()) if have.any()
                          else None, "queries": int(have.sum()),
                          "cost_usd": float(np.nan_to_num(values["cost_usd"][have, j]).mean())
                          if have.any() else None}
    same = casc.answered == o_eq.answered
    return {
        "cascade": summary(casc, cloud),
        "route_only_same_v": summary(replay(values, q, scores, cost, usd_per_correct,
                                            None), cloud),
        "route_only_equal_spend": {"usd_per_correct": v_eq, **summary(o_eq, cloud)},
        "diff_quality": float(np.nanmean(diff)) if np.isfinite(diff).any() else None,
        "diff_ci95": paired_ci(diff),
        "same_answer_share": float(same.mean()),
        "curve_route_only": curve_route,
        "curve_cascade": curve_cascade,
        "always_cloud": always,
    }
