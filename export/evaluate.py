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
cost what the daemon expects this query to cost on it (``export.daemon_policy``: its prices,
the prompt's typical count and the expert's expected answer length, capped by
``--max-tokens``); and ``daemon``: the daemon's own decision (``agent.policy.decide`` at
``--usd-per-correct`` and ``--local-margin``, the daemon's defaults) for every query, with
its share per expert, its expected cost beside the realised cost of the same choices.

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

from agent.settings import DEFAULT_LOCAL_MARGIN, DEFAULT_USD_PER_CORRECT
from export.errors import PipelineError
from export.held_out import check_held_out, held_out
from export.labels import OutcomeMatrix, finite_mean, table_sha256
from export.report import COLUMNS, format_ci
from export.routers import baselines
from export.routers.base import TrainedRouter
from export.routers.kinds import load_router
from export.scoring import (
    VALUES,
    only_experts,
    paired_ci,
    per_query,
    policy_metrics,
    profiled_in,
    scored,
)

BUDGET_SHARE = 0.4  # the acceptance bar: strongest expert's quality at <= 40% of its cost


@dataclass(frozen=True)
class EvaluateConfig:
    """One evaluation: routers (folders) compared on one table's held-out split."""

    table: Path
    router: tuple[Path, ...]
    random_seed: int = 0  # of the Random baseline
    max_test_queries: int | None = None  # a seeded sample of the test split
    experts: str | None = None  # comma-separated: route among these only (a device's set)
    price: tuple[str, ...] = ()  # NAME=IN,OUT USD per 1M tokens, over the table's own prices
    usd_per_correct: float | None = DEFAULT_USD_PER_CORRECT
    local_margin: float = DEFAULT_LOCAL_MARGIN
    default_expert: str | None = None  # the daemon's default local expert
    max_tokens: int = 256  # the requests' max_tokens (the daemon's default_max_tokens)


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
    add_daemon_arguments(p)


def add_daemon_arguments(p: argparse.ArgumentParser) -> None:
    """How the daemon prices and decides (evaluate and calibrate alike)."""
    p.add_argument("--experts", default=None,
                   help="comma-separated experts to route among (a device's configured set; "
                        "default: every expert of the table the router scores)")
    p.add_argument("--price", action="append", default=[], metavar="NAME=IN,OUT",
                   help="an expert's prices, USD per 1M input and output tokens, as configured "
                        "on the device (default: the table's own); repeatable")
    p.add_argument("--usd-per-correct", type=_money, default=DEFAULT_USD_PER_CORRECT,
                   help="the daemon's policy.usd_per_correct ('none': cost not weighed)")
    p.add_argument("--local-margin", type=float, default=DEFAULT_LOCAL_MARGIN,
                   help="the daemon's policy.local_margin")
    p.add_argument("--default-expert", default=None,
                   help="the daemon's default local expert (default: the local expert with "
                        "the best training mean)")
    p.add_argument("--max-tokens", type=int, default=256,
                   help="the requests' max_tokens (caps each expected answer)")


def _money(text: str) -> float | None:
    if text.strip().lower() in ("", "none"):
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a positive amount, or 'none'")
    return value


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
    mt: OutcomeMatrix, q: np.ndarray, scores: np.ndarray, cost: np.ndarray
) -> list[dict[str, float | None]]:
    """Quality and realised cost of ``argmax utility(score, cost, V)`` (the daemon's
    utility, ``cost`` its expected cost per query and expert) over the sweep of what a
    correct answer is worth, V (``export.calibrate.VALUES``)."""
    from agent.policy import utility

    avail = ~np.isnan(q)
    pts: list[dict[str, float | None]] = []
    for v in VALUES:
        pm = policy_metrics(mt, q, baselines.choose(utility(scores, cost, v), avail))
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


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """The stage: the evaluation object (what ``--json`` prints and the report reads)."""
    table, router_dirs = cfg.table, list(cfg.router)
    routers = load_routers(router_dirs)
    meta = next(iter(routers.values())).meta
    for r in routers.values():
        check_held_out(table, r.meta)
    if meta.kind == "irt":  # profiles for any experts: score those the table has
        meta = profiled_in(table, meta)
    meta = only_experts(meta, cfg.experts)
    m, mt, q, train = held_out(table, meta, cfg.max_test_queries)
    scores, feats = {}, {}
    for name, r in routers.items():
        scores[name], feats[name] = scored(r, mt.queries, mt.experts)
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
    pricing = {name: _daemon_policy(cfg, r, m, train, mt.experts) for name, r in routers.items()}
    costs = {name: pricing[name].expected_costs(mt.queries, feats[name]) for name in routers}
    result["daemon"] = {name: daemon_metrics(mt, q, pricing[name], pricing[name].decide_all(
        mt.queries, scores[name], feats[name], r.meta.kind == "irt" and "profile" or "onnx"))
        for name, r in routers.items()}
    result["pricing"] = {"usd_per_correct": cfg.usd_per_correct,
                         "local_margin": cfg.local_margin, "max_tokens": cfg.max_tokens,
                         "prices": {e: [p.input_usd_per_mtok, p.output_usd_per_mtok]
                                    for e, p in next(iter(pricing.values())).prices.items()
                                    if e in mt.experts}}
    _add_curves(result, m, mt, q, train, scores, weights, costs)
    _add_cascade(result, m, mt, q, train, scores, costs)
    return _json_safe(result)


def _daemon_policy(cfg: EvaluateConfig, r: TrainedRouter, m: OutcomeMatrix, train: np.ndarray,
                   experts: list[str]) -> Any:
    from export import daemon_policy

    prices = daemon_policy.table_prices(cfg.table, m) | daemon_policy.parse_prices(cfg.price)
    with np.errstate(invalid="ignore"):
        means = {e: finite_mean(m.values["correct"][train, j]) for j, e in enumerate(m.experts)}
    return daemon_policy.build(r, experts, prices, usd_per_correct=cfg.usd_per_correct,
                               local_margin=cfg.local_margin, default_expert=cfg.default_expert,
                               train_mean={e: v for e, v in means.items() if v is not None},
                               max_tokens=cfg.max_tokens)


def daemon_metrics(mt: OutcomeMatrix, q: np.ndarray, policy: Any,
                   decisions: list[Any]) -> dict[str, Any]:
    """The daemon's own choices on the test split: the share per expert (of every query,
    as ``/v1/route`` would show), quality where the chosen expert has an outcome, the
    expected cost beside the realised cost of the same choices (the table's row; capped:
    its answer cut at max_tokens, what the same request would have been billed)."""
    v = mt.values
    pick = np.array([mt.experts.index(d.expert) for d in decisions])
    rows = np.arange(len(pick))
    got = q[rows, pick]
    have = ~np.isnan(got)
    cost = v["cost_usd"][rows, pick]
    tin, tout = v["input_tokens"][rows, pick], v["output_tokens"][rows, pick]
    capped = np.array([
        0.0 if policy.kinds[e] == "local" else policy.prices[e].usd(a, min(b, policy.max_tokens))
        if np.isfinite(a) and np.isfinite(b) else np.nan
        for e, a, b in zip([d.expert for d in decisions], tin, tout, strict=True)])
    priced = np.isfinite(cost)
    expected = np.array([d.expected_cost_usd for d in decisions])
    return {
        "queries": len(pick),
        "share": {e: float((pick == j).mean()) for j, e in enumerate(mt.experts)},
        "default_expert": policy.default_expert,
        "quality": float(got[have].mean()) if have.any() else None,
        "scored_queries": int(have.sum()),
        "expected_cost_usd": float(expected.mean()),
        "realised_cost_usd": float(cost[priced].mean()) if priced.any() else None,
        "expected_cost_usd_where_realised": float(expected[priced].mean()) if priced.any()
        else None,
        "realised_capped_cost_usd": float(np.nanmean(capped)) if np.isfinite(capped).any()
        else None,
        "priced_queries": int(priced.sum()),
        "choices": [d.expert for d in decisions],
    }


def _add_cascade(result: dict[str, Any], m: OutcomeMatrix, mt: OutcomeMatrix, q: np.ndarray,
                 train: np.ndarray, scores: dict[str, np.ndarray],
                 costs: dict[str, np.ndarray]) -> None:
    """The local-first cascade at the daemon's default band, threshold and usd_per_correct
    (``export.cascade_sim``), beside route-only at the same V and at equal spend, with the
    curves. Only for a table whose local answers have a recorded confidence and that has
    a priced expert."""
    from agent.cascade import CascadeRule
    from agent.settings import DEFAULT_CASCADE_BAND, DEFAULT_CASCADE_THRESHOLD
    from export import cascade_sim

    if not cascade_sim.local_experts(mt.values).any():
        return
    if not any((c > 0).any() for c in costs.values()):
        return
    rule = CascadeRule(DEFAULT_CASCADE_BAND, DEFAULT_CASCADE_THRESHOLD)
    result["cascade"] = {
        "rule": {"band": rule.band, "threshold": rule.threshold, "signal": rule.signal},
        "usd_per_correct": DEFAULT_USD_PER_CORRECT,
        "routers": {name: cascade_sim.compare(mt.values, q, sc, costs[name],
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
    costs: dict[str, np.ndarray],
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
    covered = {e: ~np.isnan(q[:, mt.experts.index(e.removeprefix("expert:"))]) for e in experts}
    for name, sc in scores.items():
        w = weights[name]
        versus = {}
        for e, rows in covered.items():
            idx = np.flatnonzero(rows)
            per_q = per_query(w[idx], q[idx])
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
        cost = costs[name]
        if (cost > 0).any():
            result["curves"][name] = cost_curve(mt, q, sc, cost)
            s = experts[strongest]
            idx = np.flatnonzero(covered[strongest])
            paired = cost_curve(mt.subset(idx), q[idx], sc[idx], cost[idx])
            if s["cost_usd"] is not None:
                verdict.update(curve_verdict(paired, s["quality"], s["cost_usd"]))
                verdict["paired_queries"] = len(idx)
        result["acceptance"][name] = verdict


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
