"""Statistics every report of the pipeline shares (``evaluate``, ``calibrate``, the cascade
replay): a routing policy's metrics on an outcome matrix, the paired bootstrap interval,
the sweep of what a correct answer is worth, and which of a router's experts a table
scores. A leaf: it imports no other stage, so the stages import it and not each other.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import PipelineError
from export.labels import OutcomeMatrix, finite_mean
from export.routers.base import TrainedRouter

# $0.00001 .. $10 per correct answer in 61 geometric steps, then None (cost not weighed).
VALUES: tuple[float | None, ...] = (*(float(f"{10 ** (-5 + 6 * i / 60):.3g}")
                                      for i in range(61)), None)


def policy_metrics(m: OutcomeMatrix, quality: np.ndarray, w: np.ndarray) -> dict[str, Any]:
    """Metrics of a routing policy ``w`` (rows: distributions over experts)."""
    v = m.values
    tokens = v["input_tokens"] + v["output_tokens"]
    cost, tok = per_query(w, v["cost_usd"]), per_query(w, tokens)
    both = np.isfinite(cost) & np.isfinite(tok) & (tok > 0)
    return {
        "quality": finite_mean(per_query(w, quality)),
        "cost_usd": finite_mean(cost),
        "cost_per_mtok": float(cost[both].sum() / tok[both].sum() * 1e6) if both.any() else None,
        "throughput_tps": finite_mean(per_query(w, m.throughput())),
        "bertsim": finite_mean(per_query(w, v["bertsim"])),
        "nll": finite_mean(per_query(w, v["nll"])),
        "accuracy": finite_mean(per_query(w, v["correct"])),
        "queries_per_expert": {
            e: round(float(s), 2) for e, s in zip(m.experts, w.sum(axis=0), strict=True)
        },
        "queries": len(m),
    }


def per_query(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per query, the w-weighted mean of x over the experts where x is known."""
    known = ~np.isnan(x)
    den = (w * known).sum(axis=1)
    num = (w * np.where(known, x, 0.0)).sum(axis=1)
    return np.divide(num, den, out=np.full(len(x), np.nan), where=den > 0)


def profiled_in(table: Path, meta: Any) -> Any:
    """An irt router's meta narrowed to the experts ``table`` has outcomes for."""
    from export.table import iter_rows

    have = {r["expert"] for r in iter_rows(table)}
    experts = [e for e in meta.experts if e in have]
    if len(experts) < 2:
        raise PipelineError(f"{table} has outcomes for {len(experts)} of the router's profiled "
                            "experts; fit profiles for its experts first (`profile fit`)")
    return dataclasses.replace(meta, experts=experts)


def only_experts(meta: Any, experts: str | None) -> Any:
    """``meta`` narrowed to ``--experts`` (a device's configured set)."""
    if experts is None:
        return meta
    names = [e.strip() for e in experts.split(",") if e.strip()]
    unknown = sorted(set(names) - set(meta.experts))
    if unknown:
        raise PipelineError(f"--experts {','.join(unknown)}: the router does not score them "
                            f"(it has {', '.join(meta.experts)})")
    if len(names) < 2:
        raise PipelineError("--experts: name at least two experts to route among")
    return dataclasses.replace(meta, experts=[e for e in meta.experts if e in names])


def scored(r: TrainedRouter, queries: list[str], experts: list[str]
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """P(correct) of ``experts`` for ``queries``, and the queries' u(q) when the router has
    them (an irt router or bundle: what prices answer lengths per query)."""
    profiles = getattr(r, "profiles", None)
    if profiles is not None and hasattr(r, "features"):
        from export.routers.irt_tower import p_matrix

        u, d = r.features(queries)
        return p_matrix(u, d, [profiles.profiles[e] for e in experts]), u
    order = [list(r.experts).index(e) for e in experts]
    return r.score_batch(queries)[:, order], None


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
