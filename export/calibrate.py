"""``edgeroute calibrate``: choose what a correct answer is worth (``usd_per_correct``, the
policy's one cost knob) and a RouteLLM-style score threshold for a target share of cloud
calls or a target quality. Chosen on the router's validation split (carved from its
training queries the way ``edgeroute train`` carves it: never trained on), reported on its
test split, never chosen there.

Three calibrations:
- ``usd_per_correct`` V (``EDGEROUTE_POLICY__USD_PER_CORRECT``): the daemon, ``evaluate`` and
  this command all pick ``argmax utility(P, cost, V) = P - cost / V``
  (``agent.policy.utility``), with each expert's cost its mean over the training queries
  here (the daemon estimates the request's own); we sweep V and keep the largest meeting a
  cloud-share target (most quality within it) or the smallest meeting a quality target;
- score-margin threshold (RouteLLM's way): the margin ``best cloud score - best local
  score`` per query; its ``1 - share`` quantile on validation sends ``share`` of the
  queries to the cloud;
- ``local_margin`` (``--policy local``, ``EDGEROUTE_POLICY__LOCAL_MARGIN``): between the local
  experts alone (a device without a cloud expert), how much more likely to be right another
  local expert must be before the router leaves the default one (``agent.policy.
  switch_penalty``). The default is the local expert with the best training mean (or
  ``--default-expert``); the margin with the best validation quality wins, ties going to the
  larger margin (fewer switches: staying put is the simpler rule).
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from export.scoring import VALUES

# local_margin candidates, in P(correct) points. They stop at 0.1 on purpose: a larger margin
# all but switches routing between local experts off, and two local experts with clearly
# different strengths (a coder and a math model) should still be routed between.
MARGINS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.03, 0.05, 0.1)



@dataclass(frozen=True)
class CalibrateConfig:
    """One calibration: exactly one of ``target_cloud_share`` and ``target_quality``."""

    table: Path
    router: Path
    target_cloud_share: float | None = None
    target_quality: float | None = None
    policy: str = "route"  # "cascade": the cascade's band and threshold; "local": local_margin
    usd_per_correct: float | None = None  # the cascade's V (default: the shipped one)
    default_expert: str | None = None  # local: the sticky expert (default: best train mean)
    experts: str | None = None  # comma-separated: route among these (a device's set)
    price: tuple[str, ...] = ()  # NAME=IN,OUT, over the table's own prices
    max_tokens: int = 256  # the requests' max_tokens: caps each expected answer


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", type=Path, required=True, help="expert table (.jsonl[.gz])")
    p.add_argument("--router", type=Path, required=True, help="a trained router folder")
    p.add_argument("--policy", choices=("route", "cascade", "local"), default="route",
                   help="route: choose usd_per_correct for a target (default); cascade: "
                        "choose the local-first cascade's band, threshold and signal at "
                        "--usd-per-correct (export/cascade_sim.py); local: choose "
                        "local_margin between the local experts alone")
    p.add_argument("--default-expert", default=None,
                   help="local only: the default local expert (default: the local expert "
                        "with the best mean on the training split)")
    p.add_argument("--usd-per-correct", type=float, default=None,
                   help="cascade only: what a correct answer is worth (default: the "
                        "daemon's default)")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--target-cloud-share", type=float,
                      help="most share of queries (0-1) that may go to priced experts")
    goal.add_argument("--target-quality", type=float,
                      help="least mean quality (the router's metric) to keep")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--experts", default=None,
                   help="comma-separated experts to route among (a device's configured set)")
    p.add_argument("--price", action="append", default=[], metavar="NAME=IN,OUT",
                   help="an expert's prices, USD per 1M input and output tokens (default: "
                        "the table's own); repeatable")
    p.add_argument("--max-tokens", type=int, default=256,
                   help="the requests' max_tokens (caps each expected answer)")


def _point(mt: Any, q: Any, scores: Any, cost: Any, cloud: Any, v: float | None
           ) -> dict[str, Any]:
    import numpy as np

    from agent.policy import utility
    from export.routers import baselines
    from export.scoring import policy_metrics

    weights = baselines.choose(utility(scores, cost, v), ~np.isnan(q))
    pm = policy_metrics(mt, q, weights)
    share = float(weights[:, cloud].sum() / max(weights.sum(), 1.0))
    return {"usd_per_correct": v, "quality": pm["quality"], "cost_usd": pm["cost_usd"],
            "cloud_share": share}


def _threshold(mt: Any, q: Any, scores: Any, cloud: Any, t: float | None = None,
               share: float | None = None) -> dict[str, Any]:
    """The margin rule at threshold ``t``, or at the quantile giving ``share``."""
    import numpy as np

    from export.scoring import policy_metrics

    avail = ~np.isnan(q)
    s = np.where(avail, scores, -np.inf)
    best_cloud = s[:, cloud].max(axis=1)
    best_local = s[:, ~cloud].max(axis=1)
    margin = best_cloud - best_local
    finite = np.isfinite(margin)
    if t is None:
        # "higher": the share sent to the cloud never exceeds the target on this split.
        t = (float(np.quantile(margin[finite], 1 - float(share or 0.0), method="higher"))
             if finite.any() else float("inf"))
    go_cloud = finite & (margin > t) | ~np.isfinite(best_local)
    pick = np.where(go_cloud, np.argmax(np.where(cloud, s, -np.inf), axis=1),
                    np.argmax(np.where(~cloud, s, -np.inf), axis=1))
    w = np.zeros_like(scores, dtype=float)
    w[np.arange(len(pick)), pick] = 1.0
    pm = policy_metrics(mt, q, w)
    return {"threshold": t, "cloud_share": float(go_cloud.mean()), "quality": pm["quality"],
            "cost_usd": pm["cost_usd"]}


def validation_rows(m: Any, meta: Any, train: Any) -> Any:
    """The validation queries ``edgeroute train`` carved from the training split."""
    import numpy as np

    from export.labels import labelled_rows, metric_values
    from export.routers.training import validation_split

    tr = np.intersect1d(train, labelled_rows(metric_values(m, meta.labels())))
    _, val = validation_split(len(tr), 0.1, meta.seed)
    return tr[val]


class _Splits(NamedTuple):
    """A router's scores on a table's validation and test splits, and expert costs."""

    mt: Any  # test split (OutcomeMatrix)
    q: Any  # test labels
    scores: Any
    mv: Any  # validation split
    qv: Any
    scores_v: Any
    cost: Any  # test: what the daemon expects each query to cost on each expert (USD)
    cost_v: Any  # validation: the same
    train_mean: Any  # each expert's mean label on the training split (nan when none)


def _splits(cfg: CalibrateConfig) -> _Splits:
    """The router's validation split (carved from its training queries) and its test split
    of the table, both scored and priced as the daemon prices them
    (``export.daemon_policy``); an irt router scores the experts the table has."""
    import numpy as np

    from export import daemon_policy
    from export.errors import PipelineError
    from export.held_out import check_held_out, held_out
    from export.labels import metric_values
    from export.routers.kinds import load_router
    from export.scoring import only_experts, profiled_in, scored

    r = load_router(cfg.router)
    check_held_out(cfg.table, r.meta)
    meta = r.meta
    if meta.kind == "irt":
        meta = profiled_in(cfg.table, meta)
    meta = only_experts(meta, cfg.experts)
    m, mt, q, train = held_out(cfg.table, meta)
    val = validation_rows(m, meta, train)
    if len(val) == 0:
        raise PipelineError("the router's validation split is empty; nothing to choose on")
    mv, qv = m.subset(val), metric_values(m, meta.labels())[val]
    (scores, u), (scores_v, u_v) = (scored(r, x.queries, mt.experts) for x in (mt, mv))
    labels = metric_values(m, meta.labels())[train]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an expert with no label: nan
        train_mean = np.nanmean(labels, axis=0)
    prices = daemon_policy.table_prices(cfg.table, m) | daemon_policy.parse_prices(cfg.price)
    pol = daemon_policy.build(r, mt.experts, prices, usd_per_correct=None, local_margin=0.0,
                              default_expert=None, max_tokens=cfg.max_tokens,
                              train_mean={e: float(x) for e, x in zip(mt.experts, train_mean,
                                                                       strict=True)
                                          if np.isfinite(x)})
    return _Splits(mt, q, scores, mv, qv, scores_v, pol.expected_costs(mt.queries, u),
                   pol.expected_costs(mv.queries, u_v), train_mean)


def calibrate(cfg: CalibrateConfig) -> dict[str, Any]:
    """The stage: the sweep on validation, the choice, and its figures on test."""
    import numpy as np

    from export.cascade_sim import priced
    from export.errors import PipelineError

    if cfg.policy == "cascade":
        return calibrate_cascade(cfg)
    if cfg.policy == "local":
        return calibrate_local(cfg)
    router = cfg.router
    cloud_share, quality = cfg.target_cloud_share, cfg.target_quality
    if (cloud_share is None) == (quality is None):
        raise PipelineError("give exactly one target: a cloud share or a quality")
    mt, q, scores, mv, qv, scores_v, cost, cost_v, _ = _splits(cfg)
    cloud = priced(np.vstack([cost, cost_v]))
    if not cloud.any() or cloud.all():
        raise PipelineError("calibration needs both priced (cloud) and free (local) experts")
    curve = [_point(mv, qv, scores_v, cost_v, cloud, v) for v in VALUES]
    if cloud_share is not None:
        ok = [p for p in curve if p["cloud_share"] <= cloud_share + 1e-9][-1:]
    else:
        assert quality is not None
        ok = [p for p in curve if p["quality"] is not None and p["quality"] >= quality - 1e-9]
    if not ok:
        raise PipelineError("no usd_per_correct on the sweep meets the target on the "
                            "validation split; relax it")
    chosen = ok[0]
    test = _point(mt, q, scores, cost, cloud, chosen["usd_per_correct"])
    priced = [e for e, c in zip(mt.experts, cloud, strict=True) if c]
    share = cloud_share if cloud_share is not None else chosen["cloud_share"]
    t_val = _threshold(mv, qv, scores_v, cloud, share=share)
    return {"router": str(router), "experts": mt.experts, "cloud_experts": priced,
            "validation_queries": len(mv), "test_queries": len(mt),
            "chosen_on": "validation", "chosen": chosen, "test": test,
            "curve_validation": curve,
            "curve_test": [_point(mt, q, scores, cost, cloud, v) for v in VALUES],
            "routellm_threshold": {"validation": t_val, "test": _threshold(
                mt, q, scores, cloud, t=t_val["threshold"])}}


def calibrate_cascade(cfg: CalibrateConfig) -> dict[str, Any]:
    """The cascade's rule chosen on the validation split at V = ``usd_per_correct``, its
    figures on test beside route-only at the same V and at equal cloud spend."""

    from agent.cascade import CascadeRule
    from agent.settings import DEFAULT_USD_PER_CORRECT
    from export import cascade_sim
    from export.errors import PipelineError

    mt, q, scores, mv, qv, scores_v, cost, cost_v, _ = _splits(cfg)
    if not (cascade_sim.local_experts(mv.values).any()
            and cascade_sim.local_experts(mt.values).any()):
        raise PipelineError(f"{cfg.table} has no local answer with a recorded confidence in "
                            "the router's validation or test split; run `edgeroute table "
                            "confidence` on it first")
    if not (cost > 0).any():
        raise PipelineError("the cascade needs a priced (cloud) expert in the table")
    v = cfg.usd_per_correct if cfg.usd_per_correct is not None else DEFAULT_USD_PER_CORRECT
    chosen = cascade_sim.choose(mv.values, qv, scores_v, cost_v, v)
    rule = CascadeRule(**chosen["rule"])
    test = cascade_sim.compare(mt.values, q, scores, cost, v, rule, VALUES)
    return {"router": str(cfg.router), "experts": mt.experts, "usd_per_correct": v,
            "validation_queries": len(mv), "test_queries": len(mt), "chosen_on": "validation",
            "chosen": chosen, "test": test}


def _local_choice(q: Any, scores: Any, local: list[int], default: int, margin: float
                  ) -> dict[str, Any]:
    """The local experts alone at ``margin``, on the queries where every one has a label:
    quality, the share of queries sent away from the default, per-query outcomes."""
    import numpy as np

    from agent.policy import switch_penalty

    d = local.index(default)
    y = q[:, local]
    keep = ~np.isnan(y).any(axis=1)
    y = y[keep]
    u = scores[keep][:, local] - np.array(switch_penalty([True] * len(local), d, margin))
    # ties go to the default, as in the daemon
    pick = np.where(u.max(axis=1) > u[:, d], u.argmax(axis=1), d)
    got = y[np.arange(len(pick)), pick]
    return {"margin": margin, "quality": float(got.mean()) if len(got) else None,
            "switched_share": float((pick != d).mean()) if len(got) else 0.0,
            "queries": int(keep.sum()), "outcomes": got, "default_outcomes": y[:, d]}


def calibrate_local(cfg: CalibrateConfig) -> dict[str, Any]:
    """``local_margin`` chosen on the validation split between the local experts alone,
    reported on test beside always-default (paired bootstrap interval)."""
    import numpy as np

    from export import cascade_sim
    from export.errors import PipelineError
    from export.scoring import paired_ci

    mt, q, scores, mv, qv, scores_v, _, _, train_mean = _splits(cfg)
    is_local = cascade_sim.local_experts(mv.values) | cascade_sim.local_experts(mt.values)
    local = [int(j) for j in np.flatnonzero(is_local)]
    names = [mt.experts[j] for j in local]
    if len(local) < 2:
        raise PipelineError(f"{cfg.table} has {len(local)} local expert(s) (rows with a "
                            "recorded confidence); choosing between local experts needs two; "
                            "run `edgeroute table confidence` on it first")
    if cfg.default_expert is not None and cfg.default_expert not in names:
        raise PipelineError(f"--default-expert {cfg.default_expert!r} is not a local expert "
                            f"of {cfg.table}: {', '.join(names)}")
    default = (mt.experts.index(cfg.default_expert) if cfg.default_expert is not None
               else max(local, key=lambda j: np.nan_to_num(train_mean[j], nan=-1.0)))
    val = [_local_choice(qv, scores_v, local, default, m) for m in MARGINS]
    if not val[0]["queries"]:
        raise PipelineError("no validation query has a label for every local expert")
    best = max(p["quality"] for p in val)
    chosen = [p for p in val if p["quality"] >= best - 1e-9][-1]  # ties: the larger margin
    test = [_local_choice(q, scores, local, default, m) for m in MARGINS]
    at = test[MARGINS.index(chosen["margin"])]
    if not at["queries"]:
        raise PipelineError("no test query has a label for every local expert")

    def public(p: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in p.items() if k not in ("outcomes", "default_outcomes")}

    return {"router": str(cfg.router), "local_experts": names,
            "default_expert": mt.experts[default], "chosen_on": "validation",
            "validation_queries": val[0]["queries"], "test_queries": at["queries"],
            "chosen": public(chosen), "curve_validation": [public(p) for p in val],
            "curve_test": [public(p) for p in test],
            "test": {**public(at), "always_default": float(at["default_outcomes"].mean()),
                     "diff_ci95": paired_ci(at["outcomes"] - at["default_outcomes"])}}


def _print_local(res: dict[str, Any]) -> None:
    print(f"local experts: {', '.join(res['local_experts'])}; default "
          f"{res['default_expert']}; {res['validation_queries']} validation queries (chosen "
          f"there), {res['test_queries']} test queries (reported)")
    print(f"{'local_margin':>12} {'val quality':>12} {'val switched':>13} {'test quality':>13}")
    for v, t in zip(res["curve_validation"], res["curve_test"], strict=True):
        mark = "  <- chosen" if v == res["chosen"] else ""
        print(f"{v['margin']:>12g} {v['quality']:>12.4f} {v['switched_share']:>13.3f} "
              f"{t['quality'] or float('nan'):>13.4f}{mark}")
    t = res["test"]
    ci = t["diff_ci95"]
    print(f"chosen on validation: EDGEROUTE_POLICY__LOCAL_MARGIN={res['chosen']['margin']:g} "
          f"-> on test: quality {t['quality']:.4f} vs always-{res['default_expert']} "
          f"{t['always_default']:.4f}" + (f" (95% paired bootstrap {ci[0]:+.4f} .. "
                                          f"{ci[1]:+.4f})" if ci else ""))


def _print_cascade(res: dict[str, Any]) -> None:
    c, t = res["chosen"], res["test"]
    rule = c["rule"]
    print(f"{res['validation_queries']} validation queries (chosen there), "
          f"{res['test_queries']} test queries (reported); usd_per_correct "
          f"{res['usd_per_correct']}")
    print(f"chosen on validation: EDGEROUTE_POLICY__CASCADE_BAND={rule['band']} "
          f"EDGEROUTE_POLICY__CASCADE_THRESHOLD={rule['threshold']} "
          f"EDGEROUTE_POLICY__CASCADE_SIGNAL={rule['signal']} (validation utility "
          f"{c['utility']:.4f} vs route-only {c['route_only_utility']:.4f})")
    print(f"{'on test':<28} {'quality':>8} {'cost $/q':>10} {'cloud':>6} {'tried':>6} "
          f"{'kept':>6}")
    for name, pt in (("cascade", t["cascade"]), ("route-only, same V", t["route_only_same_v"]),
                     ("route-only, equal spend", t["route_only_equal_spend"])):
        print(f"{name:<28} {pt['quality'] or float('nan'):>8.4f} {pt['cost_usd']:>10.6f} "
              f"{pt['cloud_share']:>6.2f} {pt['attempted_share']:>6.2f} {pt['kept_share']:>6.2f}")
    ci = t["diff_ci95"]
    print(f"cascade minus route-only at equal spend: {t['diff_quality']:+.4f} "
          f"(95% paired bootstrap {ci[0]:+.4f} .. {ci[1]:+.4f})" if ci else "no interval")


def run(args: argparse.Namespace) -> int:
    from export.cli import stage_config

    res = calibrate(stage_config(CalibrateConfig, args))
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    if "local_experts" in res:
        _print_local(res)
        return 0
    if res.get("test", {}).get("cascade") is not None:
        _print_cascade(res)
        return 0
    c, t = res["chosen"], res["test"]
    th = res["routellm_threshold"]
    print(f"{res['validation_queries']} validation queries (chosen there), "
          f"{res['test_queries']} test queries (reported); cloud experts: "
          f"{', '.join(res['cloud_experts'])}")
    print(f"{'$/correct':>10} {'cloud share':>11} {'quality':>8} {'cost $/query':>13}  "
          "(validation)")
    for p in res["curve_validation"]:
        mark = "  <- chosen" if p == c else ""
        v = "none" if p["usd_per_correct"] is None else f"{p['usd_per_correct']:.3g}"
        print(f"{v:>10} {p['cloud_share']:>11.2f} {p['quality'] or float('nan'):>8.4f} "
              f"{p['cost_usd'] or 0:>13.6f}{mark}")
    v = c["usd_per_correct"]
    print(f"chosen on validation: EDGEROUTE_POLICY__USD_PER_CORRECT={'' if v is None else v}"
          f" -> on test: quality {t['quality']:.4f}, cost ${t['cost_usd']:.6f}/query, "
          f"cloud share {t['cloud_share']:.2f}")
    tt = th["test"]
    print(f"RouteLLM-style margin threshold {th['validation']['threshold']:.4f} (validation): "
          f"on test cloud share {tt['cloud_share']:.2f}, quality {tt['quality']:.4f}, cost "
          f"${tt['cost_usd']:.6f}/query")
    return 0
