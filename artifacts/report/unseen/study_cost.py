"""What routing costs, priced as the daemon prices a decision (``cost``), and every train row
of a held-out source against the MLP trained on that source alone (``full``).

Prices: each expert's, fitted from its table's cost and token columns by the daemon's own
``export.daemon_policy.table_prices`` (RouterBench's cost column; RouteLLM's GPT-4 and
Mixtral at the importers' list prices; RouterArena's cost column). RouterDC, ZeroEval and
MMLU-Pro carry no costs: their experts get none here (quality only; see summary.md).

A decision maximises ``agent.policy.utility`` = P - expected cost / V over the experts with an
outcome, the expected cost being the daemon's: the prompt's typical token count
(``agent.prompt_size``) at the input price plus the expected delivered answer length at the
output price, the length model the expert's mean log length over its N answers
(``export.length_fit.fit(..., "mean")``, capped at max_tokens 256 as the daemon's default).
The realised cost is the table's cost of the chosen cell. V (``usd_per_correct``) is chosen
on validation: the cheapest V whose validation quality is at least the validation best
single expert's; where none is, the V of the best validation quality.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
from corpus import POOLED, log
from estimators import CLUSTERS, Draw, kmeans, methods, routed
from study import COMPARED, DRAWS, Run, baselines, fold, pick_rows, vs_best

from agent.answer_length import capped_mean
from agent.prompt_size import prompt_size
from export.scoring import VALUES, paired_ci

MAX_TOKENS = 256
BAR_SHOTS = 50
BAR_COST = 0.8
V_RULE = ("usd_per_correct chosen per draw on validation: the cheapest V whose validation "
          "quality is at least the validation best single expert's, else the V of the best "
          "validation quality")


def price_basis(f: Any) -> None:
    """RouteLLM's MMLU rows have a prompt but no answer (its table records the letter's
    grade only): they are priced as a one-token answer at the importers' list prices
    (GPT-4-1106 $10/$30, Mixtral $0.60/$0.60 per 1M tokens), as its GSM8K rows are."""
    from export.importers import PRICES

    if f.held != "routellm":
        return
    for j, e in enumerate(f.experts):
        gap = np.isfinite(f.in_tok[:, j]) & np.isnan(f.out_tok[:, j]) & ~np.isnan(f.y[:, j])
        if e in PRICES and gap.any():
            pin, pout = PRICES[e]
            f.out_tok[gap, j] = 1.0
            f.cost[gap, j] = (f.in_tok[gap, j] * pin + pout) / 1e6


def fold_prices(f: Any) -> dict[str, Any]:
    from export.daemon_policy import table_prices

    price_basis(f)
    m = SimpleNamespace(experts=f.experts, values={"cost_usd": f.cost, "input_tokens": f.in_tok,
                                                   "output_tokens": f.out_tok})
    return {e: p for e, p in table_prices(POOLED, m).items() if p.usd(1e6, 1e6) > 0}


def expected_costs(f: Any, prices: dict[str, Any], obs: list[np.ndarray],
                   rows: np.ndarray) -> np.ndarray:
    """Expected USD per (row, expert) as the daemon's policy weighs it."""
    from export.length_fit import fit

    prompt = np.array([prompt_size([{"role": "user", "content": f.queries[i]}]).typical
                       for i in rows], dtype=float)
    out = np.zeros((len(rows), len(f.experts)))
    for j, e in enumerate(f.experts):
        p = prices.get(e)
        if p is None:
            continue
        toks = f.out_tok[obs[j], j]
        toks = toks[np.isfinite(toks)]
        length = (capped_mean(*_mean_model(fit, toks), MAX_TOKENS) if len(toks) else MAX_TOKENS)
        out[:, j] = p.usd(prompt, length)
    return out


def _mean_model(fit: Any, toks: np.ndarray) -> tuple[float, float]:
    model = fit(np.zeros((len(toks), 1)), np.log1p(toks), "mean")
    return model.bias, model.sigma


def realised(f: Any, part: str, pick: np.ndarray) -> np.ndarray:
    rows = f.part[part]
    return f.cost[rows, pick]


def sweep(p: np.ndarray, c: np.ndarray, y: np.ndarray, cost: np.ndarray) -> list[dict[str, Any]]:
    from agent.policy import utility

    out = []
    for v in VALUES:
        q, pick = routed(utility(p, c, v), y)
        rc = cost[np.arange(len(y)), pick]
        out.append({"v": v, "quality": float(q.mean()), "cost": float(np.nanmean(rc)),
                    "q": q, "pick": pick})
    return out


def pick_v(points: list[dict[str, Any]], best_q: float) -> dict[str, Any]:
    ok = [pt for pt in points if pt["quality"] >= best_q - 1e-12]
    if ok:
        return min(ok, key=lambda pt: (pt["cost"], -pt["quality"]))
    return max(points, key=lambda pt: (pt["quality"], -pt["cost"]))


def cost(run: Run) -> dict[str, Any]:
    sel = json.loads((run.out / "fewshot.json").read_text())
    names = list(dict.fromkeys([sel["chosen"], *COMPARED]))
    out: dict[str, Any] = {"max_tokens": MAX_TOKENS, "rule": V_RULE,
                           "methods": names, "sources": {}}
    for held in run.sources:
        f = fold(held)
        prices = fold_prices(f)
        if not prices:
            out["sources"][held] = {"priced": False}
            log(f"cost {held}: no prices in the table")
            continue
        cents = {k: kmeans(f.x[f.part["fit"]], k) for k in {k for k, _ in CLUSTERS}}
        bv, bt = baselines(f, "val"), baselines(f, "test")
        b_cost = float(np.nanmean(f.cost[f.part["test"], bt["best_index"]]))
        b_cost_val = float(np.nanmean(f.cost[f.part["val"], bv["best_index"]]))
        src: dict[str, Any] = {"priced": True, "prices": {e: [p.input_usd_per_mtok,
                                                              p.output_usd_per_mtok]
                                                          for e, p in prices.items()},
                               "best_single": bt["best_expert"], "best_quality": bt["best_single"],
                               "best_cost_usd": b_cost, "val_best": bv["best_expert"],
                               "val_best_cost_usd": b_cost_val, "methods": {}}
        for name in names:
            per_n = {}
            for n in run.shots:
                per_n[str(n)] = _cost_draws(f, methods()[name], n, run.draws, prices, cents, bv,
                                            bt, b_cost)
            src["methods"][name] = per_n
            r = per_n.get(str(BAR_SHOTS)) or per_n[str(run.shots[0])]
            log(f"cost {held} {name}: test diff {r['diff']*100:+.2f} pt CI {r['ci']} cost "
                f"ratio {r['cost_ratio']:.3f}")
        out["sources"][held] = src
    (run.out / "cost.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def _cost_draws(f: Any, fn: Any, n: int, draws: int, prices: dict[str, Any],
                cents: dict[int, np.ndarray], bv: dict[str, Any], bt: dict[str, Any],
                b_cost: float) -> dict[str, Any]:
    yv, yt = f.y[f.part["val"]], f.y[f.part["test"]]
    cv_real, ct_real = f.cost[f.part["val"]], f.cost[f.part["test"]]
    qs, costs, vs, curves = [], [], [], []
    for s in range(draws):
        dr = Draw(f, pick_rows(f, n, s), ("val", "test"), cents)
        p = fn(dr)
        ev = expected_costs(f, prices, dr.obs, f.part["val"])
        et = expected_costs(f, prices, dr.obs, f.part["test"])
        chosen = pick_v(sweep(p["val"], ev, yv, cv_real), bv["best_single"])
        test_pts = sweep(p["test"], et, yt, ct_real)
        t = next(pt for pt in test_pts if pt["v"] == chosen["v"])
        qs.append(t["q"])
        costs.append(t["cost"])
        vs.append(chosen["v"])
        curves.append([(pt["quality"], pt["cost"] / b_cost) for pt in test_pts])
    q = np.mean(qs, axis=0)
    diffs = [float(x.mean() - bt["best_single"]) for x in qs]
    return {"usd_per_correct": vs, "quality": float(q.mean()),
            "diff": float(q.mean() - bt["best_single"]), "diff_draws": diffs,
            "ci": vs_best(q, f, "test", bt["best_index"]),
            "ci_draws": [vs_best(x, f, "test", bt["best_index"]) for x in qs],
            "cost_usd": float(np.mean(costs)), "cost_ratio": float(np.mean(costs) / b_cost),
            "cost_ratio_draws": [c / b_cost for c in costs],
            "curve": np.mean(curves, axis=0).tolist(),
            "meets": bool((vs_best(q, f, "test", bt["best_index"]) or [0, -1])[1] >= 0
                          and np.mean(costs) / b_cost <= BAR_COST)}


# -- ceiling: is the cost bar reachable at all, with every train row or with hindsight -------
def ceiling(run: Run) -> dict[str, Any]:
    """Why the cost bar is missed: the same priced policy with each expert profiled from all
    of its train rows (fit + val), its whole V sweep read on test (a bound: V is chosen on
    test here, which no real run can do), beside Optimal priced (per query the cheapest
    expert that answered correctly, else the cheapest). The question it answers: is there a
    V at which routing keeps the best single expert's quality for <= 80% of its cost?"""
    chosen = json.loads((run.out / "fewshot.json").read_text())["chosen"]
    out: dict[str, Any] = {"method": chosen, "bar_cost": BAR_COST, "sources": {}}
    for held in run.sources:
        f = fold(held)
        prices = fold_prices(f)
        if not prices:
            continue
        cents = {k: kmeans(f.x[f.part["fit"]], k) for k in {k for k, _ in CLUSTERS}}
        train = np.sort(np.concatenate([f.part["fit"], f.part["val"]]))
        rows = f.part["test"]
        yt, ct = f.y[rows], f.cost[rows]
        bt = baselines(f, "test")
        b_cost = float(np.nanmean(ct[:, bt["best_index"]]))
        dr = Draw(f, train, ("test",), cents)
        pts = sweep(methods()[chosen](dr)["test"], expected_costs(f, prices, dr.obs, rows),
                    yt, ct)
        frontier = [{"v": pt["v"], "quality": pt["quality"], "cost_ratio": pt["cost"] / b_cost}
                    for pt in pts]
        keeps = [pt for pt in frontier if pt["quality"] >= bt["best_single"] - 1e-12]
        out["sources"][held] = {
            "best_single": bt["best_expert"], "best_quality": bt["best_single"],
            "full_profiles": {"frontier": frontier,
                              "cheapest_keeping_quality": (min(keeps, key=lambda p: p["cost_ratio"])
                                                           if keeps else None),
                              "best_quality": max(frontier, key=lambda p: p["quality"])},
            "optimal_priced": _optimal_priced(yt, ct, b_cost)}
        got = out["sources"][held]
        log(f"ceiling {held}: {json.dumps(got['full_profiles']['cheapest_keeping_quality'])} "
            f"optimal {got['optimal_priced']}")
    (run.out / "ceiling.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def _optimal_priced(y: np.ndarray, cost: np.ndarray, b_cost: float) -> dict[str, float]:
    """Hindsight: per query the cheapest expert with the best outcome among those that
    answered it (its outcome and realised cost)."""
    yy = np.nan_to_num(y, nan=-1.0)
    cc = np.where(np.isnan(y) | np.isnan(cost), np.inf, cost)
    best = yy.max(axis=1, keepdims=True)
    pick = np.argmin(np.where(yy >= best, cc, np.inf), axis=1)
    idx = np.arange(len(y))
    return {"quality": float(yy[idx, pick].mean()),
            "cost_ratio": float(np.mean(cost[idx, pick]) / b_cost)}


# -- full: every train row vs the MLP on the source alone -----------------------------------
def full(run: Run) -> dict[str, Any]:
    """The few-shot choice and the fit as it ships, each expert profiled from all of its
    train rows (fit + val), against the MLP on the source alone. Every candidate is also
    chosen among again for this regime, on validation (profiled from the fit rows only,
    scored on val: mean over sources of routed - best single), and the one chosen is
    reported on test from fit + val: many answers may want another estimator than few."""
    sel = json.loads((run.out / "fewshot.json").read_text())
    names = list(dict.fromkeys([sel["chosen"], *COMPARED]))
    out: dict[str, Any] = {"methods": names, "sources": {}}
    cands = methods()
    for held in run.sources:
        f = fold(held)
        cents = {k: kmeans(f.x[f.part["fit"]], k) for k in {k for k, _ in CLUSTERS}}
        train = np.sort(np.concatenate([f.part["fit"], f.part["val"]]))
        yv, yt = f.y[f.part["val"]], f.y[f.part["test"]]
        bv, bt = baselines(f, "val"), baselines(f, "test")
        q_mlp = routed(_mlp_scores(f, train), yt)[0]
        src: dict[str, Any] = {"train_queries": int(len(train)), "test_queries": int(len(yt)),
                               "mlp": float(q_mlp.mean()), "best_single": bt["best_single"],
                               "oracle": bt["optimal"], "profiles": {}, "candidates": {}}
        on_fit = Draw(f, f.part["fit"], ("val",), cents)
        on_train = Draw(f, train, ("test",), cents)
        for name, fn in cands.items():
            q = routed(fn(on_train)["test"], yt)[0]
            got = {"quality": float(q.mean()), "minus_mlp": float(q.mean() - q_mlp.mean()),
                   "minus_mlp_ci": paired_ci(q - q_mlp),
                   "val_gap": float(routed(fn(on_fit)["val"], yv)[0].mean() - bv["best_single"])}
            src["candidates"][name] = got
            if name in names:
                src["profiles"][name] = got
        log(f"full {held}: MLP {src['mlp']:.4f} "
            + ", ".join(f"{n} {src['profiles'][n]['quality']:.4f}" for n in names))
        out["sources"][held] = src
    gaps = {n: float(np.mean([s["candidates"][n]["val_gap"] for s in out["sources"].values()]))
            for n in cands}
    out["val_gap"] = gaps
    out["chosen"] = max(cands, key=lambda n: (round(gaps[n], 4), n == sel["chosen"]))
    out["chosen_on"] = ("validation: each expert profiled from the fit rows only, scored on "
                        "val; mean over sources of (routed - best single)")
    log(f"full: chosen on validation {out['chosen']} ({gaps[out['chosen']] * 100:+.2f} pt)")
    (run.out / "full.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def _mlp_scores(f: Any, train: np.ndarray) -> np.ndarray:
    """``edgeroute train --router mlp`` on the held-out source alone (its train rows, 10% of
    them for early stopping, soft labels of ``correct`` at temperature 0.1), scored on test."""
    from export.labels import soft_labels
    from export.routers.base import RouterMeta
    from export.routers.kinds import KINDS
    from export.routers.mlp import train_mlp
    from export.routers.training import FitConfig, validation_split

    labels, mask = soft_labels(f.y, 0.1)
    d = KINDS["mlp"].defaults
    cfg = FitConfig(epochs=d.epochs, batch_size=d.batch_size, lr=d.lr, patience=d.patience,
                    seed=0, threads=2, progress=False)
    inner, val = validation_split(len(train), 0.1, 0)
    meta = RouterMeta(kind="mlp", experts=list(f.experts), metric="correct", temperature=0.1,
                      seed=0, table_sha256="", train_queries=int(len(inner)),
                      datasets=sorted(set(f.datasets)))
    router, _ = train_mlp(meta, f.queries, labels, mask, train[inner], train[val], cfg)
    return router.score_batch([f.queries[i] for i in f.part["test"]])


__all__ = ["DRAWS", "ceiling", "cost", "full"]
