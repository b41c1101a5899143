"""``edgeroute profile lengths``: each expert's answer-length model (``agent.answer_length``),
fitted from a table's output-token column and written into its profile.

    edgeroute profile lengths --router R --table T --out R2 [--all-rows] [--report F.json]

Two forms, chosen on validation (10% of the train split, carved as ``edgeroute train``
does), reported on the test split, never chosen there:

- ``mean``: the expert's mean ``log(1 + tokens)`` and its spread, the same for every query;
- ``query``: a ridge regression of ``log(1 + tokens)`` on the router's query vector u(q)
  (frozen features, as profiles are), its penalty chosen on validation too.

Scored by the Gaussian log-likelihood of the held-out lengths (what the expected-cost
formula assumes), with two plainer figures beside it: the mean absolute error in log
tokens, and the ratio of the summed expected delivered tokens (capped at the daemon's
default max_tokens) to the summed real ones, which is how far an expected cost is off
on average. ``--all-rows`` then refits the chosen form on every row (the shipped bundle's
way: its tower trained on every row too).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from agent.answer_length import LengthModel, capped_mean
from export.errors import PipelineError

LAMBDAS = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
MAX_TOKENS = 256  # the daemon's default max_tokens: the cap the figures deliver at
MIN_ROWS = 5  # an expert with fewer lengths gets no model of its own (its kind's prior)


@dataclass(frozen=True)
class LengthFitConfig:
    table: Path
    router: Path
    out: Path
    seed: int = 0
    test_fraction: float = 0.2
    all_rows: bool = False
    form: str | None = None  # "mean" | "query"; None: chosen on validation
    report: Path | None = None


def fit(u: np.ndarray, y: np.ndarray, form: str, lam: float = 10.0) -> LengthModel:
    """One expert's model from its rows' features ``u`` and ``y = log(1 + tokens)``."""
    if form == "mean":
        return LengthModel(float(y.mean()), float(y.std()), (), len(y))
    mu_u = u.mean(axis=0)
    uc = u - mu_u
    theta = np.linalg.solve(uc.T @ uc + lam * np.eye(u.shape[1]), uc.T @ (y - y.mean()))
    bias = float(y.mean() - mu_u @ theta)
    resid = y - (u @ theta + bias)
    return LengthModel(bias, float(resid.std()), tuple(float(t) for t in theta), len(y))


def scores(model: LengthModel, u: np.ndarray, tokens: np.ndarray) -> dict[str, float]:
    """Sums for the held-out figures: log-likelihood, absolute log error, expected and real
    delivered tokens at MAX_TOKENS."""
    y = np.log1p(tokens)
    mu = np.array([model.mu(row) for row in u]) if model.theta else np.full(len(y), model.bias)
    sd = max(model.sigma, 0.05)
    ll = -0.5 * ((y - mu) / sd) ** 2 - math.log(sd * math.sqrt(2 * math.pi))
    expected = sum(capped_mean(m, model.sigma, MAX_TOKENS) for m in mu)
    return {"n": float(len(y)), "loglik": float(ll.sum()), "abs_log": float(np.abs(y - mu).sum()),
            "expected": float(expected), "real": float(np.minimum(tokens, MAX_TOKENS).sum())}


def _summary(parts: list[dict[str, float]]) -> dict[str, float | None]:
    n = sum(p["n"] for p in parts)
    if not n:
        return {"rows": 0, "loglik": None, "mae_log": None, "expected_over_real": None}
    real = sum(p["real"] for p in parts)
    return {"rows": int(n), "loglik": sum(p["loglik"] for p in parts) / n,
            "mae_log": sum(p["abs_log"] for p in parts) / n,
            "expected_over_real": sum(p["expected"] for p in parts) / real if real else None}


@dataclass(frozen=True)
class _Rows:
    """Per expert: the row indices (into the query list) that have a length, and lengths."""

    idx: dict[str, np.ndarray]
    tokens: dict[str, np.ndarray]

    def where(self, keep: np.ndarray) -> _Rows:
        mask = {e: np.isin(i, keep) for e, i in self.idx.items()}
        return _Rows({e: i[mask[e]] for e, i in self.idx.items()},
                     {e: t[mask[e]] for e, t in self.tokens.items()})


def _evaluate(train: _Rows, held: _Rows, u: np.ndarray, form: str, lam: float,
              spread: dict[str, float] | None = None) -> dict[str, float | None]:
    parts = []
    for e, idx in train.idx.items():
        if len(idx) < MIN_ROWS or not len(held.idx[e]):
            continue
        model = fit(u[idx], np.log1p(train.tokens[e]), form, lam)
        if spread and e in spread:
            model = replace(model, sigma=spread[e])
        parts.append(scores(model, u[held.idx[e]], held.tokens[e]))
    return _summary(parts)


def choose(train: _Rows, val: _Rows, u: np.ndarray,
           form: str | None = None) -> tuple[str, float, list[dict[str, Any]]]:
    """The form (and ridge penalty) with the best validation log-likelihood."""
    tried = [{"form": "mean", "lambda": None, **_evaluate(train, val, u, "mean", 0.0)}]
    tried += [{"form": "query", "lambda": lam, **_evaluate(train, val, u, "query", lam)}
              for lam in LAMBDAS]
    ok = [t for t in tried if t["loglik"] is not None and (form is None or t["form"] == form)]
    if not ok:
        raise PipelineError("no validation row has an output-token count; nothing to choose on")
    best = max(ok, key=lambda t: t["loglik"])
    return str(best["form"]), float(best["lambda"] or 0.0), tried


def held_out_spread(train: _Rows, val: _Rows, u: np.ndarray, form: str,
                    lam: float) -> dict[str, float]:
    """Each expert's residual spread on validation queries (fitted without them): the
    sigma of its shipped model. A fit's own residuals are narrower than a new query's, and
    a sigma too narrow prices long answers too low (``capped_mean`` grows with it)."""
    out = {}
    for e, idx in train.idx.items():
        held = val.idx[e]
        if len(idx) < MIN_ROWS or len(held) < MIN_ROWS:
            continue
        model = fit(u[idx], np.log1p(train.tokens[e]), form, lam)
        mu = np.array([model.mu(row) for row in u[held]])
        out[e] = float(np.sqrt(np.mean((np.log1p(val.tokens[e]) - mu) ** 2)))
    return out


def length_rows(m: Any) -> _Rows:
    out = m.values["output_tokens"]
    idx, tokens = {}, {}
    for j, e in enumerate(m.experts):
        rows = np.flatnonzero(np.isfinite(out[:, j]) & (out[:, j] >= 0))
        idx[e], tokens[e] = rows, out[rows, j]
    return _Rows(idx, tokens)


def fit_lengths(cfg: LengthFitConfig) -> dict[str, Any]:
    """The stage: choose on validation, report on test, write the profiles."""
    from export.feature_source import FeatureSource
    from export.labels import build_matrix, split_indices
    from export.routers.training import validation_split
    from export.table import read_table

    src = FeatureSource.open(cfg.router)
    m = build_matrix(read_table(cfg.table))
    rows = length_rows(m)
    need = np.unique(np.concatenate([i for i in rows.idx.values()] or [np.zeros(0, int)]))
    if not len(need):
        raise PipelineError(f"{cfg.table} has no output_tokens; no answer lengths to fit")
    print(f"features of {len(need)} queries ...", file=sys.stderr)
    u = np.zeros((len(m), src.profiles.dim))
    u[need] = src.features([m.queries[int(i)] for i in need])[0]
    train, test = split_indices(m, cfg.seed, cfg.test_fraction)
    inner, val = validation_split(len(train), 0.1, cfg.seed)
    tr, va = rows.where(train[inner]), rows.where(train[val])
    form, lam, tried = choose(tr, va, u, cfg.form)
    full = rows.where(train)
    spread = held_out_spread(tr, va, u, form, lam)
    datasets = np.array(m.datasets)
    report: dict[str, Any] = {
        "table": str(cfg.table), "router": str(cfg.router), "max_tokens": MAX_TOKENS,
        "validation": tried, "chosen": {"form": form, "lambda": lam},
        "test": {f: _evaluate(full, rows.where(test), u, f, lam if f == "query" else 0.0,
                              spread if f == form else None) for f in ("mean", "query")},
        "test_per_dataset": {str(ds): {f: _evaluate(
            full, rows.where(test[datasets[test] == ds]), u, f, lam if f == "query" else 0.0,
            spread if f == form else None) for f in ("mean", "query")}
            for ds in sorted(set(datasets[test]))},
        "fitted_on": "all rows" if cfg.all_rows else "train split",
        "sigma_from_validation": {e: round(v, 4) for e, v in spread.items()},
    }
    final = rows if cfg.all_rows else full
    profiles = src.profiles
    fitted = []
    for e, idx in final.idx.items():
        if len(idx) < MIN_ROWS or e not in profiles.profiles:
            continue
        model = fit(u[idx], np.log1p(final.tokens[e]), form, lam)
        if e in spread:  # the spread a new query sees, not the fit's own residuals
            model = replace(model, sigma=spread[e])
        fitted.append(replace(profiles.profiles[e], length=model))
    report["experts"] = {p.name: p.length.as_dict() | {"mean_tokens": round(
        float(np.expm1(np.log1p(final.tokens[p.name]).mean())), 1)}
        for p in fitted if p.length is not None}
    src.write(profiles.with_profiles(fitted), cfg.out)
    if cfg.report is not None:
        cfg.report.parent.mkdir(parents=True, exist_ok=True)
        cfg.report.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


def add_arguments(f: argparse.ArgumentParser) -> None:
    f.add_argument("--router", type=Path, required=True,
                   help="irt router folder or irt bundle (e.g. agent/assets/router)")
    f.add_argument("--table", type=Path, required=True, help="expert table with output_tokens")
    f.add_argument("--out", type=Path, required=True, help="folder for the copy with lengths")
    f.add_argument("--seed", type=int, default=0, help="split seed")
    f.add_argument("--test-fraction", type=float, default=0.2, help="held-out share")
    f.add_argument("--all-rows", action="store_true",
                   help="refit the chosen form on every row (after choosing on validation)")
    f.add_argument("--form", choices=("mean", "query"), default=None,
                   help="force a form (default: the better on validation)")
    f.add_argument("--report", type=Path, default=None, help="write the figures as JSON")


def run(args: argparse.Namespace) -> int:
    from export.cli import stage_config

    rep = fit_lengths(stage_config(LengthFitConfig, args))
    c = rep["chosen"]
    print(f"chosen on validation: {c['form']}"
          + (f" (ridge {c['lambda']:g})" if c["form"] == "query" else ""), file=sys.stderr)
    for form, t in rep["test"].items():
        print(f"test {form:>5}: loglik {_f(t['loglik'])}, MAE log {_f(t['mae_log'])}, "
              f"expected/real tokens at {MAX_TOKENS} {_f(t['expected_over_real'])} "
              f"({t['rows']} rows)", file=sys.stderr)
    print(f"{len(rep['experts'])} length model(s) -> {args.out}", file=sys.stderr)
    return 0


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
