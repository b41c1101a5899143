"""``experts calibrate --adaptive`` leaving one source out, simulated from the tables: each
held-out expert "answers" with its real outcome on calibration-like queries of its source.

The bank stands in for the shipped calibration set: 200 of the fold's fit rows, spread over
its datasets as the set is (round-robin over datasets of a seeded shuffle; 5 draws of the
bank). *Evenly spread* (what ``experts calibrate`` sends today, ``spread``) is the first N
of the bank; *adaptive* is ``export.adaptive_calibration.run_adaptive`` over the bank, each
expert on its own sequence, with either information rule. Every profile is the Laplace fit
toward the median of its kind (what the command writes); routing takes the argmax of P among
the source's experts, on validation (where the rule is chosen) and test (reported).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from corpus import log
from estimators import routed
from study import Run, baselines, fold

from export.adaptive_calibration import RULES, AdaptiveConfig, run_adaptive
from export.profile_fit import fit_profile
from export.routers.irt import p_matrix

BANK = 200
CHECKPOINTS = (10, 20, 30, 40, 50, 60, 70, 80, 100)
REFERENCE = 100  # evenly spread answers the adaptive run must match


def bank_of(f: Any, draw: int) -> np.ndarray:
    """Positions of the bank, in evenly spread order."""
    rng = np.random.default_rng(500 + draw)
    by_ds: dict[str, list[int]] = {}
    for i in rng.permutation(f.part["fit"]):
        by_ds.setdefault(f.datasets[i], []).append(int(i))
    groups = [by_ds[k] for k in sorted(by_ds)]
    out: list[int] = []
    while len(out) < BANK and any(groups):
        for g in groups:
            if g and len(out) < BANK:
                out.append(g.pop(0))
    return np.array(out, dtype=int)


def _quality(f: Any, profiles: list[Any], part: str) -> np.ndarray:
    rows = f.part[part]
    return routed(p_matrix(f.u[rows], f.d[rows], profiles), f.y[rows])[0]


def _orders(f: Any, bank: np.ndarray, rule: str) -> list[list[int]]:
    """Per expert: the bank positions it answers, in the order taken (up to 100)."""
    groups = {ds: np.array([f.datasets[i] == ds for i in bank])
              for ds in sorted({f.datasets[i] for i in bank})}
    out = []
    for j in range(len(f.experts)):
        seen = ~np.isnan(f.y[bank, j])
        if rule == "even":
            out.append([int(k) for k in np.flatnonzero(seen)])
            continue
        prior = f.known.prior(f.kind(j))
        cfg = AdaptiveConfig(max_queries=max(CHECKPOINTS), rule=rule)
        def ask(k: int, j: int = j) -> float | None:
            v = f.y[bank[k], j]
            return None if np.isnan(v) else float(v)

        run = run_adaptive(f.u[bank], f.d[bank], groups, prior, ask, cfg, name=f.experts[j],
                           kind=f.kind(j))
        out.append([k for k, y in zip(run.order, run.outcomes, strict=True) if y is not None])
    return out


def _profiles_at(f: Any, bank: np.ndarray, orders: list[list[int]], n: int) -> list[Any]:
    profs = []
    for j, order in enumerate(orders):
        rows = bank[np.array(order[:n], dtype=int)]
        prior = f.known.prior(f.kind(j))
        profs.append(fit_profile(f.u[rows], f.d[rows], f.y[rows, j], prior, f.experts[j],
                                 f.kind(j)) if len(rows) else prior)
    return profs


def adaptive(run: Run) -> dict[str, Any]:
    arms = ("even", *RULES)
    out: dict[str, Any] = {"bank": BANK, "checkpoints": list(CHECKPOINTS), "arms": list(arms),
                           "reference": REFERENCE, "draws": run.draws, "sources": {}}
    for held in run.sources:
        f = fold(held)
        res: dict[str, Any] = {a: {p: {str(n): [] for n in CHECKPOINTS} for p in ("val", "test")}
                               for a in arms}
        test_q: dict[str, np.ndarray] = {}
        for s in range(run.draws):
            bank = bank_of(f, s)
            for arm in arms:
                orders = _orders(f, bank, arm)
                for n in CHECKPOINTS:
                    profs = _profiles_at(f, bank, orders, n)
                    for part in ("val", "test"):
                        q = _quality(f, profs, part)
                        res[arm][part][str(n)].append(float(q.mean()))
                        if part == "test":
                            key = f"{arm}|{n}"
                            test_q[key] = test_q.get(key, 0.0) + q / run.draws
            log(f"adaptive {held} draw {s}: test at 50 " + ", ".join(
                f"{a} {res[a]['test']['50'][-1]:.4f}" for a in arms))
        b = baselines(f, "test")
        ref = test_q[f"even|{REFERENCE}"]
        cis = {k: [float(x) for x in (ci or [])]
               for k, ci in ((k, _ci(v - ref)) for k, v in test_q.items())}
        out["sources"][held] = {"results": res, "minus_even100_ci": cis,
                                "best_single": b["best_single"], "oracle": b["optimal"]}
    out.update(_choose(out))
    (run.out / "adaptive.json").write_text(json.dumps(out, indent=1) + "\n")
    log(f"adaptive: rule {out['chosen_rule']}; answers to reach even@{REFERENCE}: "
        f"{out['needed']}")
    return out


def _ci(d: np.ndarray) -> list[float] | None:
    from export.scoring import paired_ci

    return paired_ci(d)


def _choose(out: dict[str, Any]) -> dict[str, Any]:
    """The rule with the best mean validation quality over the checkpoints and sources;
    then, on test, the fewest answers at which it reaches evenly spread @REFERENCE."""
    srcs = out["sources"]

    def val_mean(arm: str) -> float:
        return float(np.mean([np.mean(v) for s in srcs.values()
                              for v in s["results"][arm]["val"].values()]))

    chosen = max(RULES, key=val_mean)
    needed: dict[str, int | None] = {}
    for held, s in srcs.items():
        ref = np.mean(s["results"]["even"]["test"][str(REFERENCE)])
        hit = [n for n in CHECKPOINTS if np.mean(s["results"][chosen]["test"][str(n)]) >= ref]
        needed[held] = min(hit) if hit else None
    known = [v for v in needed.values() if v is not None]
    return {"chosen_rule": chosen, "rule_val_mean": {a: val_mean(a) for a in ("even", *RULES)},
            "chosen_on": "validation: mean routed quality over checkpoints 10-100 and sources",
            "needed": needed,
            "needed_mean_reached": float(np.mean(known)) if known else None,
            "not_reached": [h for h, v in needed.items() if v is None]}
