"""``edgeroute calibrate``: choose the policy's cost weight (and a RouteLLM-style score
threshold) for a target share of cloud calls or a target quality, on a router's held-out
test split, and print what that choice is expected to cost and score.

Two calibrations, both on the same held-out queries:
- cost weight ``w`` (what the daemon applies, ``EDGEROUTE_POLICY__COST_WEIGHT``): the
  policy picks ``argmax score - w * cost/max_cost``; we sweep ``w`` and keep the smallest
  one meeting the target (least quality given away);
- score-margin threshold (RouteLLM's way): the margin ``best cloud score - best local
  score`` per query; its ``1 - share`` quantile sends exactly ``share`` of the queries to
  the cloud.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# 0, then 0.01 .. 100 in 61 geometric steps: the share changes fastest at large weights.
WEIGHTS = (0.0, *(round(10 ** (-2 + 4 * i / 60), 4) for i in range(61)))


@dataclass(frozen=True)
class CalibrateConfig:
    """One calibration: exactly one of ``target_cloud_share`` and ``target_quality``."""

    table: Path
    router: Path
    target_cloud_share: float | None = None
    target_quality: float | None = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", type=Path, required=True, help="expert table (.jsonl[.gz])")
    p.add_argument("--router", type=Path, required=True, help="a trained router folder")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target-cloud-share", type=float,
                      help="most share of queries (0-1) that may go to priced experts")
    goal.add_argument("--target-quality", type=float,
                      help="least mean quality (the router's metric) to keep")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _sweep(mt: Any, q: Any, scores: Any, cost_norm: Any, cloud: Any) -> list[dict[str, Any]]:
    import numpy as np

    from export.evaluate import policy_metrics
    from export.routers import baselines

    avail = ~np.isnan(q)
    points = []
    for w in WEIGHTS:
        weights = baselines.choose(scores - w * cost_norm, avail)
        pm = policy_metrics(mt, q, weights)
        share = float(weights[:, cloud].sum() / max(weights.sum(), 1.0))
        points.append({"cost_weight": w, "quality": pm["quality"], "cost_usd": pm["cost_usd"],
                       "cloud_share": share})
    return points


def _threshold(mt: Any, q: Any, scores: Any, cloud: Any, share: float) -> dict[str, Any]:
    import numpy as np

    from export.evaluate import policy_metrics

    avail = ~np.isnan(q)
    s = np.where(avail, scores, -np.inf)
    best_cloud = s[:, cloud].max(axis=1)
    best_local = s[:, ~cloud].max(axis=1)
    margin = best_cloud - best_local
    finite = np.isfinite(margin)
    # "higher": the share sent to the cloud never exceeds the target on this split.
    t = (float(np.quantile(margin[finite], 1 - share, method="higher")) if finite.any()
         else float("inf"))
    go_cloud = finite & (margin > t) | ~np.isfinite(best_local)
    pick = np.where(go_cloud, np.argmax(np.where(cloud, s, -np.inf), axis=1),
                    np.argmax(np.where(~cloud, s, -np.inf), axis=1))
    w = np.zeros_like(scores, dtype=float)
    w[np.arange(len(pick)), pick] = 1.0
    pm = policy_metrics(mt, q, w)
    return {"threshold": t, "cloud_share": float(go_cloud.mean()), "quality": pm["quality"],
            "cost_usd": pm["cost_usd"]}


def calibrate(cfg: CalibrateConfig) -> dict[str, Any]:
    """The stage: the sweep, the chosen weight and the margin threshold, as one object."""
    import numpy as np

    from export.errors import PipelineError
    from export.labels import held_out
    from export.routers.base import load_router

    table, router = cfg.table, cfg.router
    cloud_share, quality = cfg.target_cloud_share, cfg.target_quality
    if (cloud_share is None) == (quality is None):
        raise PipelineError("give exactly one target: a cloud share or a quality")
    r = load_router(router)
    m, mt, q, train = held_out(table, r.meta)
    scores = r.score_batch(mt.queries)[:, [list(r.experts).index(e) for e in mt.experts]]
    cost = np.nan_to_num(np.nanmean(np.where(np.isnan(m.values["cost_usd"][train]), np.nan,
                                             m.values["cost_usd"][train]), axis=0), nan=0.0)
    cloud = cost > 0
    if not cloud.any() or cloud.all():
        raise PipelineError("calibration needs both priced (cloud) and free (local) experts")
    curve = _sweep(mt, q, scores, cost / cost.max(), cloud)
    if cloud_share is not None:
        ok = [p for p in curve if p["cloud_share"] <= cloud_share + 1e-9]
    else:
        ok = [p for p in curve if p["quality"] is not None and p["quality"] >= quality - 1e-9]
        ok = ok[-1:]  # the largest weight (cheapest) still meeting the quality
    if not ok:
        raise PipelineError("no cost weight on the sweep meets the target; relax it")
    chosen = ok[0]
    priced = [e for e, c in zip(mt.experts, cloud, strict=True) if c]
    result: dict[str, Any] = {"router": str(router), "experts": mt.experts,
                              "cloud_experts": priced, "test_queries": len(mt),
                              "chosen": chosen, "curve": curve}
    share = cloud_share if cloud_share is not None else chosen["cloud_share"]
    result["routellm_threshold"] = _threshold(mt, q, scores, cloud, share)
    return result


def run(args: argparse.Namespace) -> int:
    from export.cli import stage_config

    res = calibrate(stage_config(CalibrateConfig, args))
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    c, t = res["chosen"], res["routellm_threshold"]
    print(f"{res['test_queries']} test queries; cloud experts: {', '.join(res['cloud_experts'])}")
    print(f"{'cost weight':>11} {'cloud share':>11} {'quality':>8} {'cost $/query':>13}")
    for p in res["curve"]:
        mark = "  <- chosen" if p is c or p == c else ""
        print(f"{p['cost_weight']:>11.4g} {p['cloud_share']:>11.2f} "
              f"{p['quality'] or float('nan'):>8.4f} {p['cost_usd'] or 0:>13.6f}{mark}")
    print(f"chosen: EDGEROUTE_POLICY__COST_WEIGHT={c['cost_weight']} -> expected quality "
          f"{c['quality']:.4f}, cost ${c['cost_usd']:.6f}/query, cloud share "
          f"{c['cloud_share']:.2f}")
    print(f"RouteLLM-style margin threshold {t['threshold']:.4f}: cloud share "
          f"{t['cloud_share']:.2f}, quality {t['quality']:.4f}, cost ${t['cost_usd']:.6f}/query")
    return 0
