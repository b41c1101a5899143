"""The ability-profile (irt) router study: shape chosen on validation, then test figures.

    .venv/bin/python artifacts/report/irt/study.py select   # shape on the pooled validation split
    .venv/bin/python artifacts/report/irt/study.py tables   # 5 seeds x 3 tables: irt vs MLP
    .venv/bin/python artifacts/report/irt/study.py loo      # leave-one-expert-out + profile fit
    .venv/bin/python artifacts/report/irt/study.py loo_bias # its pulls (theta, bias) on validation
    .venv/bin/python artifacts/report/irt/study.py loo_draws  # 5 draws, ceiling, pooled training
    .venv/bin/python artifacts/report/irt/study.py loo_pessimism  # a lower bound for new experts
    .venv/bin/python artifacts/report/irt/study.py loo_nearest  # the nearest known profile as prior
    .venv/bin/python artifacts/report/irt/study.py encoders  # MiniLM 1L vs model2vec (.[study])
    .venv/bin/python artifacts/report/irt/study.py budget   # RouterBench: GPT-4 quality vs cost
    .venv/bin/python artifacts/report/irt/study.py pooled   # shipped settings, pooled test split
    .venv/bin/python artifacts/report/irt/study.py local_margin  # local_margin on validation

Inputs: ``runs/pooled.jsonl.gz`` (``edgeroute table pool``, see artifacts/expert_table.md)
and ``artifacts/expert_table.jsonl.gz``. Embeddings come from the cache
(``EDGEROUTE_EMBED_CACHE``); every fit after the first encoder pass takes seconds. Each
step writes ``<step>.json`` beside this file; ``summary.md`` is rewritten from them
(``report``: ``write_summary.py``). The leave-one-out steps are in ``study_loo.py``, the encoder
comparison in ``study_encoders.py``, what they share in ``study_common.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from study_common import (
    COMMITTED,
    HERE,
    POOLED,
    REPO,
    SEEDS,
    WORK,
    chosen_config,
    log,
    macro,
    meta_for,
    routed_quality,
    sources_of,
    table_files,
    test_outcomes,
    train_irt_on,
)

from export.labels import build_matrix, labelled_rows, split_indices
from export.routers.irt import train_on_matrix
from export.routers.irt_tower import p_matrix
from export.routers.irt_training import IrtConfig
from export.scoring import paired_ci
from export.table import read_table

# -- select: shape on validation ----------------------------------------------------------
GRID = [dict(layers=L, hidden=h, dim=k) for L in (1, 2, 3) for h in (0, 256) for k in (8, 32)]


def select() -> dict[str, Any]:
    from export.routers.training import validation_split

    rows = read_table(POOLED)
    m = build_matrix(rows)
    y = m.values["correct"]
    train, test = split_indices(m, 0, 0.2)
    train = np.intersect1d(train, labelled_rows(y))
    inner, val = validation_split(len(train), 0.1, 0)
    src = sources_of(rows)
    val_rows = train[val]
    groups = [src[m.query_ids[i]] for i in val_rows]
    results = []
    for shape in GRID:
        cfg = IrtConfig(**shape, seed=0)
        t0 = time.monotonic()
        meta = meta_for(POOLED, m, 0, len(inner))
        router, tlog = train_on_matrix(m, meta, cfg, train, 0.1, "select", progress=False)
        p = router.score_batch([m.queries[i] for i in val_rows])
        q = routed_quality(p, y[val_rows])
        res = {**shape, "val_bce": tlog["best_val_bce"], "epochs": tlog["epochs"],
               "val_quality": macro(q, groups), "fit_s": round(time.monotonic() - t0, 1)}
        log(json.dumps(res))
        results.append(res)
    return write_selection(results)


def write_selection(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Lowest validation BCE (a proper score over every observed cell); within 0.001 of
    it, the fewest encoder layers (the router's latency is the encoder's)."""
    low = min(r["val_bce"] for r in results)
    near = [r for r in results if r["val_bce"] <= low + 1e-3]
    best = min(near, key=lambda r: (r["layers"], r["val_bce"]))
    out = {"split": "pooled corpus seed 0; validation = 10% of train (test never seen)",
           "criterion": "validation BCE over all observed cells; within 0.001 of the best, "
                        "fewest layers. Routed correctness on validation is reported too: "
                        "its spread over shapes (0.683-0.691 macro) is within noise",
           "results": results, "chosen": {k: best[k] for k in ("layers", "hidden", "dim")}}
    (HERE / "select.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def tables() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, table in table_files().items():
        out[name] = []
        for seed in SEEDS:
            base = WORK / name / f"seed{seed}"
            irt_dir, mlp_dir = base / "irt", base / "mlp"
            if not (mlp_dir / "router.json").is_file():
                subprocess.run([str(REPO / ".venv/bin/edgeroute"), "train", "--table", str(table),
                                "--router", "mlp", "--metric", "correct", "--seed", str(seed),
                                "--out", str(mlp_dir), "--no-progress"], check=True)
            if not (irt_dir / "router.json").is_file():
                train_irt_on(table, seed, irt_dir, chosen_config(seed))
            mt, y, s_irt = test_outcomes(table, irt_dir)
            _, y2, s_mlp = test_outcomes(table, mlp_dir)
            assert np.array_equal(np.isnan(y), np.isnan(y2))
            qi, qm = routed_quality(s_irt, y), routed_quality(s_mlp, y)
            means = np.nanmean(y, axis=0)
            res = {"seed": seed, "test_queries": len(y), "irt": float(qi.mean()),
                   "mlp": float(qm.mean()), "irt_minus_mlp_ci95": paired_ci(qi - qm),
                   "best_expert": mt.experts[int(np.nanargmax(means))],
                   "best_expert_quality": float(np.nanmax(means)),
                   "oracle": float(np.nanmax(np.nan_to_num(y, nan=-1), axis=1).mean())}
            # the BERT-3L classifier of the same seed: expert_table_seeds/run.sh trains the
            # committed table's, public_seeds/run.sh the public tables' (capped at 1200
            # training queries there: uncapped it is hours of CPU a run)
            bert_dir = (REPO / "runs" / "seeds" / str(seed) / "bert3" if name == "expert_table"
                        else base / "bert3")
            if (bert_dir / "router.json").is_file():
                _, y3, s_bert = test_outcomes(table, bert_dir)
                assert np.array_equal(np.isnan(y), np.isnan(y3))
                qb = routed_quality(s_bert, y)
                res.update(bert=float(qb.mean()), irt_minus_bert_ci95=paired_ci(qi - qb))
            log(f"{name} {json.dumps(res)}")
            out[name].append(res)
    (HERE / "tables.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


# -- RouterBench: quality vs cost against GPT-4 ---------------------------------------------------
def budget() -> dict[str, Any]:
    from agent.policy import utility
    from export.held_out import held_out
    from export.routers.kinds import load_router

    table = table_files()["routerbench"]
    out: dict[str, Any] = {"table": "routerbench", "seeds": []}
    for seed in SEEDS:
        r = load_router(WORK / "routerbench" / f"seed{seed}" / "irt")
        m, mt, y, train = held_out(table, r.meta)
        order = [list(r.experts).index(e) for e in mt.experts]
        p = r.score_batch(mt.queries)[:, order]
        cost_train = np.nanmean(m.values["cost_usd"][train], axis=0)
        cost_test = mt.values["cost_usd"]
        g = mt.experts.index("gpt-4-1106-preview")
        gq, gc = float(np.nanmean(y[:, g])), float(np.nanmean(cost_test[:, g]))
        curve = []
        for v in [None, *np.geomspace(1e-4, 10, 41).tolist()]:
            util = np.where(np.isnan(y), -np.inf, utility(p, cost_train[None, :], v))
            pick = util.argmax(axis=1)
            idx = np.arange(len(y))
            curve.append({"usd_per_correct": v, "quality": float(y[idx, pick].mean()),
                          "cost_usd": float(np.nanmean(cost_test[idx, pick]))})
        reach = [c["cost_usd"] / gc for c in curve if c["quality"] >= gq - 1e-12]
        within = [c["quality"] for c in curve if c["cost_usd"] <= 0.5 * gc]
        res = {"seed": seed, "gpt4_quality": gq, "gpt4_cost_usd": gc,
               "min_cost_ratio_at_gpt4_quality": min(reach) if reach else None,
               "best_quality_within_50pct_cost": max(within) if within else None,
               "curve": curve}
        log(f"budget seed {seed}: {json.dumps({k: v for k, v in res.items() if k != 'curve'})}")
        out["seeds"].append(res)
    (HERE / "budget.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


# -- the shipped configuration on the pooled test split ------------------------------------
def pooled(router_dir: Path = REPO / "build" / "router-irt") -> dict[str, Any]:
    """The shipped settings trained on the pooled train split (``build/router-irt``), on the
    pooled test split: per source, and on the committed queries with only the two local
    experts (what a device without a cloud expert gets) against always-Qwen."""
    from export.held_out import held_out
    from export.routers.kinds import load_router

    rows = read_table(POOLED)
    src = sources_of(rows)
    r = load_router(router_dir)
    m, mt, y, _ = held_out(POOLED, r.meta)
    p = r.score_batch(mt.queries)
    groups = [src[q] for q in mt.query_ids]
    q = routed_quality(p, y)
    g = np.array(groups)
    # a single expert counts where it answered at least half of that source's queries
    means = {s_: {e: float(np.nanmean(y[g == s_, j])) for j, e in enumerate(mt.experts)
                  if (~np.isnan(y[g == s_, j])).mean() >= 0.5}
             for s_ in sorted(set(groups))}
    local = [mt.experts.index(e) for e in ("qwen2.5-coder-0.5b", "smollm2-135m")]
    sel = np.array([g == "collected" for g in groups])
    yl = y[sel][:, local]
    ql = routed_quality(p[sel][:, local], yl)
    out = {"router": str(router_dir), "test_queries": len(mt),
           "per_source": {s_: {"router": v, "best_expert": max(means[s_].values()),
                               "best_expert_name": max(means[s_], key=means[s_].get)}
                          for s_, v in macro(q, groups).items() if s_ != "macro"},
           "local_only": {"queries": int(sel.sum()), "router": float(ql.mean()),
                          "always_qwen": float(np.nanmean(yl[:, 0])),
                          "always_smollm2": float(np.nanmean(yl[:, 1])),
                          "oracle": float(np.nanmax(yl, axis=1).mean()),
                          "router_minus_qwen_ci95": paired_ci(ql - yl[:, 0])}}
    log(json.dumps(out))
    (HERE / "pooled.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


# -- local_margin: the local experts alone, chosen on validation ---------------------------
def local_margin() -> dict[str, Any]:
    """``edgeroute calibrate --policy local`` for the shipped router (pooled table) and the
    committed-table irt routers of the five seeds: the margin chosen on each validation
    split, its test quality against always-default (the shipped default comes from the
    first)."""
    from export.calibrate import CalibrateConfig, calibrate

    runs = [("pooled (shipped router)", POOLED, REPO / "build" / "router-irt")]
    runs += [(f"committed table, seed {s}", COMMITTED, WORK / "expert_table" / f"seed{s}" / "irt")
             for s in SEEDS]
    out: dict[str, Any] = {"runs": []}
    for name, table, router in runs:
        res = calibrate(CalibrateConfig(table=table, router=router, policy="local"))
        res["name"] = name
        log(f"local_margin {name}: chosen {res['chosen']['margin']} test "
            f"{res['test']['quality']:.4f} vs default {res['test']['always_default']:.4f}")
        out["runs"].append(res)
    (HERE / "local_margin.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


# -- a calibrated profile against the table ----------------------------------------------------
def calib_check(profiles: Path = REPO / "runs" / "calib-data" / "device-profiles.json",
                expert: str = "smollm2-135m") -> dict[str, Any]:
    """``edgeroute experts calibrate smollm2-135m`` (100 calibration queries, none from the
    table) wrote ``profiles``; its predicted accuracy per dataset on the committed table's
    queries, through the embedded bundle's own graph, against the table's accuracy."""
    from agent.profiles import ProfileSet
    from agent.router_bundle import embedded_bundle
    from export.routers.kinds import load_router

    bundle = load_router(embedded_bundle())
    fitted = ProfileSet.read(profiles).profiles[expert]
    shipped = bundle.profiles.profiles[expert]
    rows = [r for r in read_table(COMMITTED) if r["expert"] == expert and r["correct"] is not None]
    u, d = bundle.features([r["query"] for r in rows])
    y = np.array([float(r["correct"]) for r in rows])
    ds = np.array([r["dataset"] for r in rows])
    # the same answers fitted from the local prior, as for an expert nothing is known of
    from export.profile_fit import DEFAULT_L2, DEFAULT_L2_BIAS, fit_profile

    cal = read_table(profiles.parent / "calibration" / f"{expert}.jsonl")
    cu, cd = bundle.features([r["query"] for r in cal])
    cy = np.array([float(r["correct"]) for r in cal])
    others = ProfileSet(bundle.profiles.encoder_id, bundle.profiles.dim,
                        {k: v for k, v in bundle.profiles.profiles.items() if k != expert})
    # the same answers refitted with today's defaults: from the shipped profile (what the
    # command does now) and from the local prior alone
    now = fit_profile(cu, cd, cy, shipped, expert, "local", DEFAULT_L2,
                      l2_bias=DEFAULT_L2_BIAS)
    blind = fit_profile(cu, cd, cy, others.prior("local"), expert, "local", DEFAULT_L2,
                        l2_bias=DEFAULT_L2_BIAS)
    pf, ps = p_matrix(u, d, [fitted])[:, 0], p_matrix(u, d, [shipped])[:, 0]
    pb, pn = p_matrix(u, d, [blind])[:, 0], p_matrix(u, d, [now])[:, 0]
    out: dict[str, Any] = {"expert": expert, "calibration_answers": fitted.observations,
                           "l2": DEFAULT_L2, "l2_bias": DEFAULT_L2_BIAS, "per_dataset": {}}
    for name in sorted(set(ds.tolist())):
        k = ds == name
        out["per_dataset"][name] = {"queries": int(k.sum()), "table": float(y[k].mean()),
                                    "calibrated": float(pf[k].mean()),
                                    "calibrated_today_defaults": float(pn[k].mean()),
                                    "shipped": float(ps[k].mean()),
                                    "from_prior_only": float(pb[k].mean()),
                                    "within_0.1": bool(abs(pn[k].mean() - y[k].mean()) <= 0.1)}
    log(json.dumps(out))
    (HERE / "calib_check.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


# -- summary.md and plots from the JSON files: write_summary.py ------------------------------
def report() -> None:
    sys.path.insert(0, str(HERE))
    from write_summary import report as write_report

    write_report()


if __name__ == "__main__":
    step = sys.argv[1] if len(sys.argv) > 1 else "select"
    from study_encoders import encoders
    from study_loo import loo, loo_bias, loo_draws, loo_l2, loo_nearest, loo_pessimism

    steps = {"select": select, "tables": tables, "loo": loo, "loo_l2": loo_l2,
             "loo_bias": loo_bias, "loo_draws": loo_draws,
             "loo_pessimism": loo_pessimism,
             "loo_nearest": loo_nearest, "encoders": encoders,
             "budget": budget, "pooled": pooled, "calib_check": calib_check,
             "local_margin": local_margin,
             "report": report}
    steps[step]()
