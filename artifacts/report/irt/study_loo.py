"""Leave one expert out (``study.py loo``, ``loo_l2``, ``loo_bias``, ``loo_draws``,
``loo_pessimism``): a router trained without an expert, the expert profiled from a few of its
answers, against the router that trained on all its rows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
from study_common import (
    HERE,
    POOLED,
    WORK,
    chosen_config,
    log,
    routed_quality,
    table_files,
    test_outcomes,
    train_irt_on,
)

from export.labels import build_matrix, labelled_rows, split_indices
from export.routers.irt_tower import p_matrix
from export.table import read_table


# -- leave one expert out ----------------------------------------------------------------------
def loo(shots: int = 50) -> dict[str, Any]:
    from agent.profiles import ProfileSet
    from export.profile_fit import fit_profile
    from export.routers.irt import expert_kind

    files = table_files()
    out: dict[str, Any] = {"shots": shots, "seed": 0, "tables": {}}
    for name in ("routerdc", "routerbench"):
        table = files[name]
        full_dir = WORK / name / "seed0" / "irt"
        if not (full_dir / "router.json").is_file():
            train_irt_on(table, 0, full_dir, chosen_config(0))
        mt, y, s_full = test_outcomes(table, full_dir)
        q_full = float(routed_quality(s_full, y).mean())
        rows = []
        for expert in mt.experts:
            d = WORK / name / "loo" / expert.replace("/", "_")
            router, m = train_irt_on(table, 0, d, chosen_config(0), drop=expert)
            others = ProfileSet(router.profiles.encoder_id, router.profiles.dim,
                                {k: v for k, v in router.profiles.profiles.items() if k != expert})
            j = m.experts.index(expert)
            train, _ = split_indices(m, 0, 0.2)
            obs = train[~np.isnan(m.values["correct"][train, j])]
            pick = np.sort(np.random.default_rng(0).choice(obs, min(shots, len(obs)),
                                                           replace=False))
            u, dd = router.features([m.queries[i] for i in pick])
            kind = expert_kind(expert)
            prof = fit_profile(u, dd, m.values["correct"][pick, j], others.prior(kind), expert,
                               kind, fitted_on=f"{shots} train rows")
            router.profiles = others.with_profiles([prof])
            u_t, d_t = router.features(mt.queries)
            names = list(router.profiles.profiles)
            p = p_matrix(u_t, d_t, list(router.profiles.profiles.values()))
            p = p[:, [names.index(e) for e in mt.experts]]
            q = float(routed_quality(p, y).mean())
            res = {"expert": expert, "loo_quality": q, "full_quality": q_full,
                   "difference": q - q_full}
            log(f"{name} {json.dumps(res)}")
            rows.append(res)
        out["tables"][name] = rows
    (HERE / "loo.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


L2_GRID = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)


def loo_l2(shots: int = 50) -> dict[str, Any]:
    """The profile fit's pull toward the prior, chosen on validation: the routers ``loo``
    trained without each expert are reused; each l2 fits the left-out expert from the same
    ``shots`` train rows; the l2 with the best mean validation quality is kept and its
    test figures reported."""
    return _loo_grid([(l2, None) for l2 in L2_GRID], "loo_l2", shots)


BIAS_GRID = tuple((l2, b) for l2 in (10.0, 30.0, 100.0) for b in (0.3, 1.0, 3.0, 10.0, None))


def loo_bias(shots: int = 50) -> dict[str, Any]:
    """As ``loo_l2``, with the bias pulled apart from theta (``l2_bias``; None: as theta):
    50 answers say how often an expert is right better than where it is strong."""
    return _loo_grid(list(BIAS_GRID), "loo_bias", shots)


def _loo_grid(grid: list[tuple[float, float | None]], out_name: str,
              shots: int) -> dict[str, Any]:
    from agent.profiles import ProfileSet
    from export.profile_fit import fit_profile
    from export.routers.irt import expert_kind
    from export.routers.kinds import load_router
    from export.routers.training import validation_split

    files = table_files()
    per: list[dict[str, Any]] = []
    for name in ("routerdc", "routerbench"):
        table = files[name]
        full = load_router(WORK / name / "seed0" / "irt")
        m = build_matrix(read_table(table), full.experts)
        y = m.values["correct"]
        train, test = split_indices(m, 0, 0.2)
        train = np.intersect1d(train, labelled_rows(y))
        test = np.intersect1d(test, labelled_rows(y))
        inner, val = validation_split(len(train), 0.1, 0)
        val_rows, fit_rows = train[val], train[inner]
        u_v, d_v = full.features([m.queries[i] for i in val_rows])
        u_t, d_t = full.features([m.queries[i] for i in test])
        full_names = list(full.profiles.profiles)
        base = {"val": float(routed_quality(p_matrix(u_v, d_v, list(
            full.profiles.profiles.values())), y[val_rows]).mean()),
                "test": float(routed_quality(p_matrix(u_t, d_t, list(
                    full.profiles.profiles.values())), y[test]).mean())}
        assert full_names == list(m.experts)
        for expert in m.experts:
            r = load_router(WORK / name / "loo" / expert.replace("/", "_"))
            j = m.experts.index(expert)
            obs = fit_rows[~np.isnan(y[fit_rows, j])]
            pick = np.sort(np.random.default_rng(0).choice(obs, min(shots, len(obs)),
                                                           replace=False))
            u, d = r.features([m.queries[i] for i in pick])
            others = ProfileSet(r.profiles.encoder_id, r.profiles.dim,
                                {k: v for k, v in r.profiles.profiles.items() if k != expert})
            uv, dv = r.features([m.queries[i] for i in val_rows])
            ut, dt = r.features([m.queries[i] for i in test])
            kind = expert_kind(expert)
            for l2, l2_bias in grid:
                prof = fit_profile(u, d, y[pick, j], others.prior(kind), expert, kind, l2,
                                   l2_bias=l2_bias)
                profs = others.with_profiles([prof]).profiles
                order = [list(profs).index(e) for e in m.experts]
                qv = routed_quality(p_matrix(uv, dv, list(profs.values()))[:, order],
                                    y[val_rows]).mean()
                qt = routed_quality(p_matrix(ut, dt, list(profs.values()))[:, order],
                                    y[test]).mean()
                per.append({"table": name, "expert": expert, "l2": l2, "l2_bias": l2_bias,
                            "val_diff": float(qv) - base["val"],
                            "test_diff": float(qt) - base["test"]})

    def key(l2: float, l2_bias: float | None) -> str:
        return f"{l2:g}" if l2_bias is None else f"{l2:g}/{l2_bias:g}"

    means = {key(*g): float(np.mean([r["val_diff"] for r in per
                                     if (r["l2"], r["l2_bias"]) == g])) for g in grid}
    chosen = max(means, key=lambda k: means[k])
    l2_c, bias_c = next(g for g in grid if key(*g) == chosen)
    out = {"shots": shots, "grid": [list(g) for g in grid], "mean_val_diff": means,
           "chosen_l2": l2_c, "chosen_l2_bias": bias_c,
           "chosen_on": "validation (10% of each table's train split)",
           "test": [r for r in per if (r["l2"], r["l2_bias"]) == (l2_c, bias_c)], "all": per}
    log(f"{out_name}: mean validation differences {means}; chosen {chosen}")
    for r in out["test"]:
        log(f"{r['table']} {r['expert']}: test difference {r['test_diff']:+.4f}")
    (HERE / f"{out_name}.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


# -- leave one expert out: five draws, pulls on validation, a ceiling, pooled training ------
DRAWS = (0, 1, 2, 3, 4)
SHOTS = (25, 50, 80, 100, 200, 400)  # 80: the whole shipped calibration set


def _loo_cases() -> list[dict[str, Any]]:
    """The leave-one-out settings: ``per table`` (the routers ``loo`` trained on RouterDC or
    the RouterBench slice alone) and ``pooled`` (trained on the pooled tables without the
    expert's outcomes, the shipped router's setting; compared with the same training with
    them, on the pooled queries the expert answered)."""
    from export.routers.kinds import load_router
    from export.routers.training import validation_split

    def split(m: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y = m.values["correct"]
        train, test = split_indices(m, 0, 0.2)
        train, test = (np.intersect1d(x, labelled_rows(y)) for x in (train, test))
        inner, val = validation_split(len(train), 0.1, 0)  # the training's own validation
        return train[inner], train[val], test

    cases = []
    files = table_files()
    for name in ("routerdc", "routerbench"):
        full = load_router(WORK / name / "seed0" / "irt")
        m = build_matrix(read_table(files[name]), full.experts)
        cases.append({"case": f"per table: {name}", "m": m, "full": full, "experts": m.experts,
                      "loo_dir": WORK / name / "loo", "split": split(m), "table": None})
    rows = read_table(POOLED)
    m = build_matrix(rows)
    full_dir = WORK / "pooled_loo" / "full"
    if not (full_dir / "router.json").is_file():
        train_irt_on(POOLED, 0, full_dir, chosen_config(0))
    for name in ("routerdc", "routerbench"):
        cases.append({"case": f"pooled: {name} experts", "m": m, "full": load_router(full_dir),
                      "experts": sorted({r["expert"] for r in rows if r.get("source") == name}),
                      "loo_dir": WORK / "pooled_loo", "split": split(m), "table": POOLED})
    return cases


class _LooExpert:
    """One left-out expert: its router (trained without it), the others' profiles, its
    observed fit rows, and the validation and test queries it answered with the full
    router's routed outcome on them."""

    def __init__(self, router: Any, m: Any, expert: str, fit_rows: np.ndarray,
                 splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        from agent.profiles import ProfileSet
        from export.routers.irt import expert_kind

        self.router, self.m, self.expert = router, m, expert
        self.y = m.values["correct"]
        self.j = m.experts.index(expert)
        self.others = ProfileSet(router.profiles.encoder_id, router.profiles.dim,
                                 {k: v for k, v in router.profiles.profiles.items()
                                  if k != expert})
        self.kind = expert_kind(expert)
        self.obs = fit_rows[~np.isnan(self.y[fit_rows, self.j])]
        self.eval: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, float]] = {}
        for k, (rows, base) in splits.items():
            rows_e = rows[~np.isnan(self.y[rows, self.j])]
            u, d = router.features([m.queries[i] for i in rows_e])
            self.eval[k] = (rows_e, u, d, float(base[np.searchsorted(rows, rows_e)].mean()))

    def draw(self, n: int, seed: int) -> np.ndarray:
        return np.sort(np.random.default_rng(seed).choice(self.obs, min(n, len(self.obs)),
                                                          replace=False))

    def features(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.router.features([self.m.queries[i] for i in rows])  # type: ignore[no-any-return]

    def score(self, prof: Any, split: str, column: np.ndarray | None = None) -> float:
        """Routed quality on ``split`` with ``prof`` as the expert's profile (``column``:
        its P(correct) per query in place of the profile's), minus the full router's."""
        profs = self.others.with_profiles([prof]).profiles
        order = [list(profs).index(e) for e in self.m.experts]
        rows, u_e, d_e, q_base = self.eval[split]
        p = p_matrix(u_e, d_e, list(profs.values()))
        if column is not None:
            p[:, list(profs).index(self.expert)] = column
        return float(routed_quality(p[:, order], self.y[rows]).mean()) - q_base

    def quality(self, pick: np.ndarray, pull: tuple[float, float | None], split: str) -> float:
        """``score`` with the expert profiled from rows ``pick`` (prior: its kind's median)."""
        from export.profile_fit import fit_profile

        u, d = self.features(pick)
        prof = fit_profile(u, d, self.y[pick, self.j], self.others.prior(self.kind),
                           self.expert, self.kind, pull[0], l2_bias=pull[1])
        return self.score(prof, split)


def _loo_experts() -> Iterator[tuple[str, _LooExpert]]:
    """(case, left-out expert) over ``_loo_cases``; a pooled case's router trained without
    the expert is trained here when missing."""
    from export.routers.kinds import load_router

    for c in _loo_cases():
        m, full = c["m"], c["full"]
        y = m.values["correct"]
        fit_rows, val, test = c["split"]
        order = [list(full.experts).index(e) for e in m.experts]
        base = {k: routed_quality(full.score_batch([m.queries[i] for i in rows])[:, order],
                                  y[rows]) for k, rows in (("val", val), ("test", test))}
        for expert in c["experts"]:
            d = c["loo_dir"] / expert.replace("/", "_")
            if (d / "router.json").is_file():
                r = load_router(d)
            elif c["table"] is not None:
                r, _ = train_irt_on(c["table"], 0, d, chosen_config(0), drop=expert)
            else:
                raise SystemExit(f"{d}: run `study.py loo` first")
            yield c["case"], _LooExpert(r, m, expert, fit_rows, {"val": (val, base["val"]),
                                                                  "test": (test, base["test"])})


def loo_draws(shots: int = 50) -> dict[str, Any]:
    """Leave one expert out, measured over five draws of its ``shots`` answers (``loo``
    reports one draw), with the profile fit's pulls chosen on validation over all draws.

    Per left-out expert: the validation and test differences for every pull in
    ``BIAS_GRID``; for the pull chosen on validation (mean over experts, draws and cases),
    the test difference by number of answers (``SHOTS``) and the *ceiling*, the profile fitted
    on every train row of the expert. The features are frozen, so a ceiling below -1 point
    says the query tower, trained without the expert, lacks the directions of its strengths:
    no number of answers closes that gap."""
    from export.profile_fit import DEFAULT_L2, DEFAULT_L2_BIAS

    def key(pull: tuple[float, float | None]) -> str:
        return f"{pull[0]:g}" if pull[1] is None else f"{pull[0]:g}/{pull[1]:g}"

    grid = list(BIAS_GRID)
    default = key((DEFAULT_L2, DEFAULT_L2_BIAS))
    per: list[dict[str, Any]] = []
    prepared = []
    for case, ex in _loo_experts():
        for pull in grid:
            res = [(ex.quality(ex.draw(shots, s), pull, "val"),
                    ex.quality(ex.draw(shots, s), pull, "test")) for s in DRAWS]
            per.append({"case": case, "expert": ex.expert, "pull": key(pull),
                        "val": [v for v, _ in res], "test": [t for _, t in res]})
        prepared.append((case, ex))
        log(f"loo_draws {case} {ex.expert}: default pull test "
            f"{np.mean(next(x['test'] for x in per[::-1] if x['pull'] == default)):+.4f}")
    means = {key(g): float(np.mean([v for x in per if x["pull"] == key(g) for v in x["val"]]))
             for g in grid}
    chosen = max(means, key=lambda k: means[k])
    pull_c = next(g for g in grid if key(g) == chosen)
    experts_out = []
    for case, ex in prepared:
        expert = ex.expert
        row, dflt = (next(x for x in per if (x["case"], x["expert"], x["pull"])
                          == (case, expert, k)) for k in (chosen, default))
        curve = {str(n): float(np.mean([ex.quality(ex.draw(n, s), pull_c, "test")
                                        for s in DRAWS])) for n in SHOTS}
        experts_out.append({"case": case, "expert": expert, "test_draws": row["test"],
                            "test_mean": float(np.mean(row["test"])),
                            "test_mean_default_pull": float(np.mean(dflt["test"])),
                            "by_shots": curve, "ceiling": ex.quality(ex.obs, pull_c, "test"),
                            "train_rows": int(len(ex.obs))})
        log(f"loo_draws {case} {expert}: {json.dumps(experts_out[-1])}")
    out = {"shots": shots, "draws": list(DRAWS), "grid": [key(g) for g in grid],
           "mean_val_diff": means, "chosen_pull": chosen, "default_pull": default,
           "chosen_on": "validation: 10% of each train split, mean over experts, draws, cases",
           "experts": experts_out, "all": per}
    (HERE / "loo_draws.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


PESSIMISM = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)


def loo_pessimism(shots: int = 50) -> dict[str, Any]:
    """Tried, not shipped: score a freshly profiled expert by a lower bound, sigmoid(z - k sd),
    sd its logit's standard deviation under the fit's Laplace posterior (the inverse Hessian),
    so that a few lucky answers do not pull traffic to it. Same cases and draws as
    ``loo_draws``, default pulls; k chosen on validation, every k reported on test."""
    from export.profile_fit import fit_profile, posterior_cov

    per: list[dict[str, Any]] = []
    for case, ex in _loo_experts():
        for seed in DRAWS:
            pick = ex.draw(shots, seed)
            u, d = ex.features(pick)
            prof = fit_profile(u, d, ex.y[pick, ex.j], ex.others.prior(ex.kind), ex.expert,
                               ex.kind)
            beta = np.array([*prof.theta, prof.bias])
            cov = posterior_cov(u, d, prof)
            row: dict[str, Any] = {"case": case, "expert": ex.expert, "draw": seed}
            for split in ("val", "test"):
                _, u_e, d_e, _ = ex.eval[split]
                a_e = np.hstack([u_e, np.ones((len(u_e), 1))])
                z = a_e @ beta - d_e
                sd = np.sqrt(np.einsum("ij,jk,ik->i", a_e, cov, a_e))
                for k in PESSIMISM:
                    row[f"{split} {k:g}"] = ex.score(prof, split,
                                                     1.0 / (1.0 + np.exp(-(z - k * sd))))
            per.append(row)
        log(f"loo_pessimism {case} {ex.expert}")
    cases = list(dict.fromkeys(x["case"] for x in per))
    summary = {split: {f"{k:g}": {"mean": float(np.mean([x[f"{split} {k:g}"] for x in per])),
                                  **{case: {"mean": float(np.mean([x[f"{split} {k:g}"]
                                                                   for x in per
                                                                   if x["case"] == case])),
                                            "worst": float(min(x[f"{split} {k:g}"] for x in per
                                                               if x["case"] == case))}
                                     for case in cases}}
                       for k in PESSIMISM} for split in ("val", "test")}
    chosen = max(summary["val"], key=lambda k: summary["val"][k]["mean"])
    out = {"shots": shots, "chosen_k": chosen, "chosen_on": "validation, mean of all cases",
           "summary": summary, "all": per}
    log(f"loo_pessimism: chosen k {chosen}; test {json.dumps(summary['test'])}")
    (HERE / "loo_pessimism.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def loo_nearest(shots: int = 50) -> dict[str, Any]:
    """Tried, not shipped: fit the new expert toward the known profile (or the median prior)
    under which its answers are most likely, instead of toward the median prior of its
    kind. Same cases and draws as ``loo_draws``, default pulls."""
    from export.profile_fit import fit_profile

    def loglik(u: np.ndarray, d: np.ndarray, y: np.ndarray, prof: Any) -> float:
        p = np.clip(p_matrix(u, d, [prof])[:, 0], 1e-6, 1 - 1e-6)
        return float((y * np.log(p) + (1 - y) * np.log(1 - p)).sum())

    per: list[dict[str, Any]] = []
    for case, ex in _loo_experts():
        for seed in DRAWS:
            pick = ex.draw(shots, seed)
            u, d = ex.features(pick)
            y = ex.y[pick, ex.j]
            cands = {"median": ex.others.prior(ex.kind), **ex.others.profiles}
            near = max(cands, key=lambda k: loglik(u, d, y, cands[k]))
            row: dict[str, Any] = {"case": case, "expert": ex.expert, "draw": seed,
                                   "nearest": near}
            for mode, prior in (("median", cands["median"]), ("nearest", cands[near])):
                prof = fit_profile(u, d, y, prior, ex.expert, ex.kind)
                for split in ("val", "test"):
                    row[f"{split} {mode}"] = ex.score(prof, split)
            per.append(row)
        log(f"loo_nearest {case} {ex.expert}")
    cases = list(dict.fromkeys(x["case"] for x in per))
    summary = {f"{split} {mode}": {"mean": float(np.mean([x[f"{split} {mode}"] for x in per])),
                                   **{case: float(np.mean([x[f"{split} {mode}"] for x in per
                                                           if x["case"] == case]))
                                      for case in cases}}
               for split in ("val", "test") for mode in ("median", "nearest")}
    out = {"shots": shots, "summary": summary, "all": per}
    log(f"loo_nearest: {json.dumps(summary)}")
    (HERE / "loo_nearest.json").write_text(json.dumps(out, indent=1) + "\n")
    return out
