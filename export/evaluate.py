"""``edgeroute evaluate``: routers and baselines side by side on the test split.

    edgeroute evaluate --table T --router DIR [DIR ...] [--json] [--report OUTDIR]

For every policy (each router, Zero, Random, Optimal, every single expert as
``expert:<name>``), overall and per dataset: ``quality`` (mean of the label metric,
higher is better: for ``nll`` it is minus the NLL), ``cost_usd`` (mean per query),
``cost_per_mtok`` (USD per million input+output tokens), ``throughput_tps``
(output_tokens / latency_s), ``bertsim``, ``nll``, ``accuracy``, ``queries_per_expert``
and ``apgr`` (share of the Zero-to-Optimal quality gap recovered). Plus, per router, a
cost-quality curve: choose argmax utility(score_e, cost_e, V) (``agent.policy.utility``, the
daemon's own) over a sweep of V, what a correct answer is worth in USD, with each expert's
cost its mean over the *training* queries (what a deployed router knows).

Choices are made among the experts that have an outcome for the query (a choice whose
result was never recorded cannot be scored); all routers must share the label metric,
seed and test fraction, so they are compared on the same queries.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import PipelineError
from export.labels import OutcomeMatrix, check_held_out, finite_mean, held_out, table_sha256
from export.report import COLUMNS, format_ci
from export.routers import baselines
from export.routers.base import TrainedRouter, load_router

BUDGET_SHARE = 0.4  # the acceptance bar: strongest expert's quality at <= 40% of its cost


@dataclass(frozen=True)
class EvaluateConfig:
    """One evaluation: routers (folders) compared on one table's held-out split."""

    table: Path
    router: tuple[Path, ...]
    random_seed: int = 0  # of the Random baseline
    max_test_queries: int | None = None  # a seeded sample of the test split


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", type=Path, required=True, help="expert table (.jsonl[.gz])")
    p.add_argument(
        "--router",
        type=Path,
        nargs="+",
        action="extend",
        required=True,
        help="trained router folder(s); compared on one test split",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--report", type=Path, default=None, help="write Markdown + PNG report here")
    p.add_argument(
        "--max-test-queries",
        type=int,
        default=None,
        help="evaluate on a seeded sample of the test split, drawn evenly over datasets",
    )
    p.add_argument("--random-seed", type=int, default=0, help="seed of the Random baseline")


def policy_metrics(m: OutcomeMatrix, quality: np.ndarray, w: np.ndarray) -> dict[str, Any]:
    """Metrics of a routing policy ``w`` (rows: distributions over experts)."""
    v = m.values
    tokens = v["input_tokens"] + v["output_tokens"]
    cost, tok = _per_query(w, v["cost_usd"]), _per_query(w, tokens)
    both = np.isfinite(cost) & np.isfinite(tok) & (tok > 0)
    return {
        "quality": finite_mean(_per_query(w, quality)),
        "cost_usd": finite_mean(cost),
        "cost_per_mtok": float(cost[both].sum() / tok[both].sum() * 1e6) if both.any() else None,
        "throughput_tps": finite_mean(_per_query(w, m.throughput())),
        "bertsim": finite_mean(_per_query(w, v["bertsim"])),
        "nll": finite_mean(_per_query(w, v["nll"])),
        "accuracy": finite_mean(_per_query(w, v["correct"])),
        "queries_per_expert": {
            e: round(float(s), 2) for e, s in zip(m.experts, w.sum(axis=0), strict=True)
        },
        "queries": len(m),
    }


def _per_query(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per query, the w-weighted mean of x over the experts where x is known."""
    known = ~np.isnan(x)
    den = (w * known).sum(axis=1)
    num = (w * np.where(known, x, 0.0)).sum(axis=1)
    return np.divide(num, den, out=np.full(len(x), np.nan), where=den > 0)


def optimal_metrics(m: OutcomeMatrix, quality: np.ndarray) -> dict[str, Any]:
    w = baselines.optimal_weights(quality, m.values["cost_usd"])
    out = policy_metrics(m, quality, w)
    for k, per_q in baselines.optimal_bounds(m, quality).items():
        out[k] = finite_mean(per_q)
    return out


def policies(
    mt: OutcomeMatrix, q: np.ndarray, router_scores: dict[str, np.ndarray], random_seed: int
) -> dict[str, np.ndarray]:
    """Weights of every policy but Optimal on the test queries."""
    avail = ~np.isnan(q)
    out = {name: baselines.choose(s, avail) for name, s in router_scores.items()}
    out["zero"] = baselines.zero_weights(avail)
    out["random"] = baselines.random_weights(avail, random_seed)
    for j, e in enumerate(mt.experts):
        out[f"expert:{e}"] = baselines.expert_weights(avail, j)
    return out


def summarise(mt: OutcomeMatrix, q: np.ndarray, weights: dict[str, np.ndarray]) -> dict[str, Any]:
    res = {name: policy_metrics(mt, q, w) for name, w in weights.items()}
    res["optimal"] = optimal_metrics(mt, q)
    zero, best = res["zero"]["quality"], res["optimal"]["quality"]
    for r in res.values():
        gap_ok = None not in (zero, best, r["quality"]) and best - zero > 1e-12
        r["apgr"] = (r["quality"] - zero) / (best - zero) if gap_ok else None
    return res


def cost_curve(
    mt: OutcomeMatrix, q: np.ndarray, scores: np.ndarray, mean_cost: np.ndarray
) -> list[dict[str, float | None]]:
    """Quality and cost of ``argmax utility(score, cost, V)`` (the daemon's policy) over
    the sweep of what a correct answer is worth, V (``export.calibrate.VALUES``)."""
    from agent.policy import utility
    from export.calibrate import VALUES

    avail = ~np.isnan(q)
    pts: list[dict[str, float | None]] = []
    for v in VALUES:
        pm = policy_metrics(mt, q, baselines.choose(utility(scores, mean_cost[None, :], v),
                                                    avail))
        pts.append({"usd_per_correct": v, "quality": pm["quality"], "cost_usd": pm["cost_usd"]})
    return pts


def curve_verdict(
    curve: list[dict[str, Any]], strong_q: float, strong_cost: float
) -> dict[str, Any]:
    """Read the acceptance numbers off a curve."""
    ok = [p for p in curve if p["quality"] is not None and p["cost_usd"] is not None]
    match = [p["cost_usd"] for p in ok if p["quality"] >= strong_q - 1e-12]
    cheap = [p["quality"] for p in ok if p["cost_usd"] <= BUDGET_SHARE * strong_cost]
    return {
        "cost_ratio_at_strongest_quality": min(match) / strong_cost
        if match and strong_cost > 0
        else None,
        "best_quality_within_40pct_cost": max(cheap) if cheap else None,
    }


def load_routers(dirs: list[Path]) -> dict[str, TrainedRouter]:
    routers: dict[str, TrainedRouter] = {}
    for d in dirs:
        r = load_router(d)
        name = r.kind if r.kind not in routers else f"{r.kind}@{Path(d).name}"
        routers[name] = r
    first = next(iter(routers.values())).meta
    for name, r in routers.items():
        mm = r.meta
        if sorted(mm.experts) != sorted(first.experts):
            raise PipelineError(f"router {name} has experts {mm.experts}, not {first.experts}")
        if (mm.label_spec, mm.seed, mm.test_fraction) != (
            first.label_spec,
            first.seed,
            first.test_fraction,
        ):
            raise PipelineError(
                f"router {name} was trained with another metric/seed/test fraction than "
                f"{first.kind}; retrain with the same --metric, --seed and --test-fraction"
            )
    return routers


def profiled_in(table: Path, meta: Any) -> Any:
    """An irt router's meta narrowed to the experts ``table`` has outcomes for."""
    import dataclasses

    from export.table import iter_rows

    have = {r["expert"] for r in iter_rows(table)}
    experts = [e for e in meta.experts if e in have]
    if len(experts) < 2:
        raise PipelineError(f"{table} has outcomes for {len(experts)} of the router's profiled "
                            "experts; fit profiles for its experts first (`profile fit`)")
    return dataclasses.replace(meta, experts=experts)


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """The stage: the evaluation object (what ``--json`` prints and the report reads)."""
    table, router_dirs = cfg.table, list(cfg.router)
    routers = load_routers(router_dirs)
    meta = next(iter(routers.values())).meta
    for r in routers.values():
        check_held_out(table, r.meta)
    if meta.kind == "irt":  # profiles for any experts: score those the table has
        meta = profiled_in(table, meta)
    m, mt, q, train = held_out(table, meta, cfg.max_test_queries)
    scores = {}
    for name, r in routers.items():
        order = [list(r.experts).index(e) for e in mt.experts]
        scores[name] = r.score_batch(mt.queries)[:, order]
    weights = policies(mt, q, scores, cfg.random_seed)
    result: dict[str, Any] = {
        "table": str(table),
        "table_sha256": table_sha256(table),
        "metric": meta.metric,
        "label_spec": meta.label_spec,
        "seed": meta.seed,
        "experts": mt.experts,
        "test_queries": len(mt),
        "overall": summarise(mt, q, weights),
        "per_dataset": {},
        "routers": {
            n: {"dir": str(d), **r.meta.extra}
            for (n, r), d in zip(routers.items(), router_dirs, strict=True)
        },
    }
    for ds in sorted(set(mt.datasets)):
        idx = np.array([i for i, d in enumerate(mt.datasets) if d == ds])
        result["per_dataset"][ds] = summarise(
            mt.subset(idx), q[idx], {k: w[idx] for k, w in weights.items()}
        )
    _add_curves(result, m, mt, q, train, scores, weights)
    _add_cascade(result, m, mt, q, train, scores)
    return _json_safe(result)


def _add_cascade(result: dict[str, Any], m: OutcomeMatrix, mt: OutcomeMatrix, q: np.ndarray,
                 train: np.ndarray, scores: dict[str, np.ndarray]) -> None:
    """The local-first cascade at the daemon's default band, threshold and usd_per_correct
    (``export.cascade_sim``), beside route-only at the same V and at equal spend, with the
    curves. Only for a table whose local answers have a recorded confidence and that has
    a priced expert."""
    from agent.cascade import CascadeRule
    from agent.settings import (
        DEFAULT_CASCADE_BAND,
        DEFAULT_CASCADE_THRESHOLD,
        DEFAULT_USD_PER_CORRECT,
    )
    from export import cascade_sim
    from export.calibrate import VALUES

    cost_train = m.values["cost_usd"][train]
    if np.isnan(cost_train).all() or not cascade_sim.local_experts(mt.values).any():
        return
    mean_cost = np.nan_to_num(_mean_cost(m, cost_train))
    if not (mean_cost > 0).any():
        return
    rule = CascadeRule(DEFAULT_CASCADE_BAND, DEFAULT_CASCADE_THRESHOLD)
    result["cascade"] = {
        "rule": {"band": rule.band, "threshold": rule.threshold, "signal": rule.signal},
        "usd_per_correct": DEFAULT_USD_PER_CORRECT,
        "routers": {name: cascade_sim.compare(mt.values, q, sc, mean_cost,
                                              DEFAULT_USD_PER_CORRECT, rule, VALUES)
                    for name, sc in scores.items()},
    }


def _add_curves(
    result: dict[str, Any],
    m: OutcomeMatrix,
    mt: OutcomeMatrix,
    q: np.ndarray,
    train: np.ndarray,
    scores: dict[str, np.ndarray],
    weights: dict[str, np.ndarray],
) -> None:
    """Cost-quality curves and the acceptance figures, each router against each expert on
    the queries that expert has an outcome for (paired).

    Why paired: a public table may lack an expert on whole datasets (GPT-4 has no PubMedQA
    in RouterBench); its mean over the queries it has is not comparable with a router's
    mean over all of them."""
    overall = result["overall"]
    experts = {
        k: v for k, v in overall.items() if k.startswith("expert:") and v["quality"] is not None
    }
    strongest = max(experts, key=lambda k: experts[k]["quality"])
    result["strongest_expert"] = strongest
    result["curves"], result["acceptance"] = {}, {}
    cost_train = m.values["cost_usd"][train]
    has_cost = not np.isnan(cost_train).all()
    mean_cost = _mean_cost(m, cost_train) if has_cost else None
    covered = {e: ~np.isnan(q[:, mt.experts.index(e.removeprefix("expert:"))]) for e in experts}
    for name, sc in scores.items():
        w = weights[name]
        versus = {}
        for e, rows in covered.items():
            idx = np.flatnonzero(rows)
            per_q = _per_query(w[idx], q[idx])
            diff = per_q - q[idx, mt.experts.index(e.removeprefix("expert:"))]
            versus[e] = {
                "queries": len(idx),
                "router_quality": finite_mean(per_q),
                "expert_quality": experts[e]["quality"],
                "diff_ci95": paired_ci(diff),
            }
        beats = all(
            v["router_quality"] is not None and v["router_quality"] > v["expert_quality"]
            for v in versus.values()
        )
        verdict: dict[str, Any] = {"versus_experts": versus, "beats_every_expert": beats}
        if mean_cost is not None:
            result["curves"][name] = cost_curve(mt, q, sc, mean_cost)
            s = experts[strongest]
            idx = np.flatnonzero(covered[strongest])
            paired = cost_curve(mt.subset(idx), q[idx], sc[idx], mean_cost)
            if s["cost_usd"] is not None:
                verdict.update(curve_verdict(paired, s["quality"], s["cost_usd"]))
                verdict["paired_queries"] = len(idx)
        result["acceptance"][name] = verdict


def paired_ci(diff: np.ndarray, resamples: int = 2000, seed: int = 0) -> list[float] | None:
    """95% bootstrap interval of the mean per-query difference (router minus expert).

    Why: on a test split of a hundred queries one query moves a mean by about 0.01, so a
    "win" or a "tie" means little without its interval; resampling the queries (seeded,
    so a report is reproducible) shows how far the difference could move."""
    d = np.asarray(diff, dtype=float)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def _mean_cost(m: OutcomeMatrix, cost_train: np.ndarray) -> np.ndarray:
    """Each expert's mean training cost in USD (unknown: the priciest's, to be safe)."""
    known = [finite_mean(cost_train[:, j]) for j in range(len(m.experts))]
    top = max(c for c in known if c is not None)
    return np.array([top if c is None else c for c in known])


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _fmt(v: Any, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def format_table(res: dict[str, Any]) -> str:
    cols = COLUMNS
    lines = [f"{'policy':<44}" + "".join(f"{c:>15}" for c in cols)]
    for name, r in res.items():
        lines.append(f"{name[:44]:<44}" + "".join(f"{_fmt(r.get(c)):>15}" for c in cols))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from export.cli import stage_config

    result = evaluate(stage_config(EvaluateConfig, args))
    if args.report is not None:
        from export.report import write_report

        write_report(result, args.report)
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    print(f"metric {result['metric']} on {result['test_queries']} test queries of {args.table}")
    print(format_table(result["overall"]))
    for ds, res in result["per_dataset"].items():
        print(f"\n[{ds}]")
        print(format_table(res))
    for name, c in (result.get("cascade") or {}).get("routers", {}).items():
        ci = format_ci(c["diff_ci95"])
        print(f"{name} cascade (defaults {result['cascade']['rule']}): quality "
              f"{_fmt(c['cascade']['quality'])} at ${_fmt(c['cascade']['cost_usd'])}/query "
              f"vs route-only at equal spend {_fmt(c['route_only_equal_spend']['quality'])} "
              f"(difference {_fmt(c['diff_quality'])}, 95% interval {ci})", file=sys.stderr)
    strongest = result.get("strongest_expert")
    for name, a in result.get("acceptance", {}).items():
        vs = a["versus_experts"].get(strongest, {})
        print(f"{name}: beats every expert: {a['beats_every_expert']}; vs {strongest} on its "
              f"{vs.get('queries')} queries: {_fmt(vs.get('router_quality'))} vs "
              f"{_fmt(vs.get('expert_quality'))} (95% interval of the difference "
              f"{format_ci(vs.get('diff_ci95'))}); cost ratio at its quality: "
              f"{_fmt(a.get('cost_ratio_at_strongest_quality'))}; best quality within 40% of "
              f"its cost: {_fmt(a.get('best_quality_within_40pct_cost'))}", file=sys.stderr)
    return 0
