"""Adaptive calibration: which calibration query a new expert should answer next, and when
its profile is known well enough to stop (``edgeroute experts calibrate NAME --adaptive``).

Computerized adaptive testing picks the next item where it tells most about the examinee
at the current estimate. Here the examinee is the expert and the unknowns are its profile
beta = (theta, bias); an item is a calibration query with x = [u(q), 1] and difficulty d(q),
answered correctly with p = sigmoid(x . beta - d). One graded answer adds
p (1 - p) x x^T to the precision of the fit's Laplace posterior (the log-likelihood's
Hessian; the prior's pulls are its diagonal start), so with Sigma the current posterior
covariance:

- ``dopt`` (D-optimal): the gain in log det precision is log(1 + p (1 - p) x^T Sigma x),
  largest where the Fisher weight p (1 - p) times the posterior variance of the item's
  logit is largest. For a one-dimensional 2PL item, x^T Sigma x = a^2 var(ability), and
  this is CAT's rule p (1 - p) a^2.
- ``family``: what the stopping rule measures. A dataset family's accuracy A_f (the mean of
  P(correct) over its calibration queries) has, by the delta method, variance g_f^T Sigma
  g_f with g_f the mean of p (1 - p) x over the family; one answer at x shrinks it (Sherman-
  Morrison) by w (g_f^T Sigma x)^2 / (1 + w x^T Sigma x), w = p (1 - p). The item with the
  largest total shrinkage over the families not yet below the target is taken.

The run stops when every family's posterior sd of its accuracy is at or below
``target_sd`` (after ``min_queries`` answers), or at ``max_queries``. The sd is the one
``experts calibrate`` prints (``export.profile_fit.accuracy_spread``, profiles drawn from
the posterior), over the family's calibration queries. Which rule ships and what it buys
against the evenly spread selection was measured leaving one source out
(artifacts/report/unseen/).

The loop takes the answers through a callback, so the command (live calls, each answer
appended with fsync) and the study (a table's outcomes) run the same code; the answers
already stored are passed in, which is how a rerun resumes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.profiles import Profile, sigmoid
from export.profile_fit import (
    DEFAULT_L2,
    DEFAULT_L2_BIAS,
    accuracy_spread,
    fit_profile,
    posterior_cov,
)

RULES = ("dopt", "family")
# Chosen between the two on leave-one-source-out validation (artifacts/report/unseen/
# adaptive.json: family 0.7348, dopt 0.7307; the evenly spread default 0.7438 beat both).
DEFAULT_RULE = "family"
MIN_QUERIES = 5  # a profile needs at least this many answers (as ``experts calibrate``)


@dataclass(frozen=True)
class AdaptiveConfig:
    max_queries: int = 100
    target_sd: float | None = None  # None: stop at max_queries only
    rule: str = DEFAULT_RULE
    l2: float = DEFAULT_L2
    l2_bias: float | None = DEFAULT_L2_BIAS
    min_queries: int = MIN_QUERIES


@dataclass
class AdaptiveRun:
    """The answers in the order they were taken (resumed ones first), the fitted profile,
    each family's posterior sd at the end, and why the run stopped."""

    order: list[int] = field(default_factory=list)
    outcomes: list[float | None] = field(default_factory=list)
    profile: Profile | None = None
    sd: dict[str, float] = field(default_factory=dict)
    stopped: str = ""  # "target" | "queries" | "exhausted"


def _design(u: np.ndarray) -> np.ndarray:
    return np.hstack([u, np.ones((len(u), 1))])


def _weights(a: np.ndarray, d: np.ndarray, profile: Profile) -> np.ndarray:
    beta = np.array([*profile.theta, profile.bias], dtype=np.float64)
    p = sigmoid(a @ beta - d)
    return p * (1.0 - p)


def information(u: np.ndarray, d: np.ndarray, profile: Profile, cov: np.ndarray,
                rule: str = DEFAULT_RULE, groups: Mapping[str, np.ndarray] | None = None,
                open_groups: Sequence[str] | None = None) -> np.ndarray:
    """Per candidate (rows of u, d): how much one answer to it would tell, by ``rule``.
    ``groups`` (name -> row mask over the candidates) and ``open_groups`` (the families
    still above the target; None: all) serve the ``family`` rule."""
    if rule not in RULES:
        raise ValueError(f"rule {rule!r}: choose one of {RULES}")
    a = _design(u)
    w = _weights(a, d, profile)
    sx = a @ cov  # (n, k): Sigma x per candidate
    quad = np.einsum("ij,ij->i", sx, a)  # x^T Sigma x
    if rule == "dopt":
        return np.log1p(w * quad)
    if not groups:
        raise ValueError("the family rule needs the candidates' families (groups)")
    names = list(groups) if open_groups is None else [g for g in open_groups if g in groups]
    total = np.zeros(len(a))
    for name in names:
        mask = groups[name]
        if not mask.any():
            continue
        g = (a[mask] * w[mask, None]).mean(axis=0)  # d A_f / d beta
        total += w * (sx @ g) ** 2 / (1.0 + w * quad)
    return total


def run_adaptive(u: np.ndarray, d: np.ndarray, groups: Mapping[str, np.ndarray],
                 prior: Profile, ask: Callable[[int], float | None], cfg: AdaptiveConfig,
                 answered: Sequence[tuple[int, float | None]] = (), name: str | None = None,
                 kind: str | None = None, fitted_on: str = "") -> AdaptiveRun:
    """Calibrate one expert adaptively over candidates (u, d) grouped in ``groups``.

    ``ask(i)`` has the expert answer candidate i and returns its grade (None: ungradable,
    it is not asked again and not fitted on); ``answered`` are (i, grade) already stored.
    The profile is refitted from ``prior`` after every answer."""
    run = AdaptiveRun()
    name = name or prior.name
    kind = kind or prior.kind
    taken = np.zeros(len(u), dtype=bool)
    for i, y in answered:
        if not taken[i]:
            taken[i] = True
            run.order.append(int(i))
            run.outcomes.append(y)
    profile, cov = _fit(u, d, run, prior, cfg, name, kind, fitted_on)
    while True:
        graded = sum(y is not None for y in run.outcomes)
        open_groups = list(groups)
        if cfg.target_sd is not None:  # the sd is measured only where it can stop the run
            run.sd = accuracy_spread(u, d, profile, dict(groups), cfg.l2, cfg.l2_bias, cov=cov)
            open_groups = [g for g, s in run.sd.items() if s > cfg.target_sd]
            if graded >= cfg.min_queries and not open_groups:
                run.stopped = "target"
                break
        if len(run.order) >= cfg.max_queries:
            run.stopped = "queries"
            break
        if taken.all():
            run.stopped = "exhausted"
            break
        score = information(u, d, profile, cov, cfg.rule, groups, open_groups or None)
        i = int(np.argmax(np.where(taken, -np.inf, score)))
        taken[i] = True
        run.order.append(i)
        run.outcomes.append(ask(i))
        profile, cov = _fit(u, d, run, prior, cfg, name, kind, fitted_on)
    run.profile = profile
    run.sd = accuracy_spread(u, d, profile, dict(groups), cfg.l2, cfg.l2_bias, cov=cov)
    return run


def _fit(u: np.ndarray, d: np.ndarray, run: AdaptiveRun, prior: Profile, cfg: AdaptiveConfig,
         name: str, kind: str, fitted_on: str) -> tuple[Profile, np.ndarray]:
    """The profile from the graded answers so far (the prior itself before any), and its
    posterior covariance (the prior's alone: the inverse of its pulls)."""
    rows = [i for i, y in zip(run.order, run.outcomes, strict=True) if y is not None]
    if not rows:
        profile = Profile(name, prior.theta, prior.bias, kind, fitted_on, 0, prior.mean_p,
                          prior.length)
        return profile, posterior_cov(u[:0], d[:0], profile, cfg.l2, cfg.l2_bias)
    idx = np.array(rows, dtype=int)
    y = np.array([y for y in run.outcomes if y is not None], dtype=np.float64)
    profile = fit_profile(u[idx], d[idx], y, prior, name, kind, cfg.l2, fitted_on,
                          l2_bias=cfg.l2_bias)
    return profile, posterior_cov(u[idx], d[idx], profile, cfg.l2, cfg.l2_bias)
