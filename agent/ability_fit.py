"""The fit of one ability profile from graded answers, with the router frozen: a leaf both
the daemon (``agent.refit``, learning from its own outcomes) and the pipeline
(``export.profile_fit``, ``edgeroute experts calibrate``) import, so the profile a device
refits and the profile the pipeline fits come from one function.

P(correct) = sigmoid(u(q) . theta + bias - d(q)); the MAP estimate of (theta, bias) under a
Gaussian prior centred on a prior profile (an L2 pull, theta firmly, the bias loosely), by
Newton's method. Outcomes may be soft (a score in [0, 1]) and weighted (a judge's grade or a
reference-free check counts for less than a user's own verdict). Plain numpy.
"""

from __future__ import annotations

import numpy as np

from agent.errors import AgentError
from agent.profiles import Profile, sigmoid

# Pulls toward the prior: theta (where an expert is strong) firmly, the bias (how often it
# is right) loosely, since a few answers say more about the second. Chosen by
# leave-one-SOURCE-out on validation (artifacts/report/unseen/summary.md: 30/3 -0.40 points
# vs the best single expert, mean over six held-out sources and N = 25-200, against 10/3's
# -0.49): new experts from a table the tower never saw, which is what a user configures.
# The earlier choice, 10/3, was leave-one-expert-out inside the training sources
# (artifacts/report/irt/loo_bias.json), which does not measure transfer.
DEFAULT_L2 = 30.0
DEFAULT_L2_BIAS = 3.0


class FitError(AgentError):
    """A profile cannot be fitted from what was given (no outcomes, mismatched shapes)."""


def fit_profile(u: np.ndarray, d: np.ndarray, y: np.ndarray, prior: Profile, name: str,
                kind: str, l2: float = DEFAULT_L2, fitted_on: str = "",
                iterations: int = 50, l2_bias: float | None = DEFAULT_L2_BIAS,
                weights: np.ndarray | None = None) -> Profile:
    """MAP profile of one expert from features (u, d) and outcomes y in [0, 1]: theta
    pulled toward the prior's with ``l2``, the bias with ``l2_bias`` (None: ``l2``);
    ``weights``: how much each outcome counts (None: 1 each)."""
    if len(y) == 0:
        raise FitError(f"expert {name!r}: no graded outcomes to fit a profile on")
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(y),) or len(u) != len(y) or len(d) != len(y):
        raise FitError(f"expert {name!r}: {len(u)} feature rows, {len(d)} difficulties, "
                       f"{len(y)} outcomes and {w.shape} weights do not match")
    a = np.hstack([u, np.ones((len(u), 1))])
    beta0 = np.array([*prior.theta, prior.bias], dtype=np.float64)
    beta = beta0.copy()
    pull = pulls(len(beta), l2, l2_bias)

    def objective(b: np.ndarray) -> float:
        z = a @ b - d
        return float((w * (np.logaddexp(0.0, z) - y * z)).sum()
                     + 0.5 * (pull * (b - beta0) ** 2).sum())

    for _ in range(iterations):
        p = sigmoid(a @ beta - d)
        grad = a.T @ (w * (p - y)) + pull * (beta - beta0)
        hess = (a * (w * p * (1 - p))[:, None]).T @ a + np.diag(pull)
        step = np.linalg.solve(hess, grad)
        # Newton's full step where it descends; halved until it does (from far off, with
        # outcomes far from the prior's predictions, the full step overshoots and cycles).
        now, t = objective(beta), 1.0
        while objective(beta - t * step) > now and t > 1e-6:
            t /= 2
        beta -= t * step
        if np.abs(t * step).max() < 1e-8:
            break
    return Profile(name=name, theta=tuple(float(t) for t in beta[:-1]), bias=float(beta[-1]),
                   kind=kind, fitted_on=fitted_on, observations=len(y),
                   mean_p=float(sigmoid(a @ beta - d).mean()))


def pulls(n: int, l2: float, l2_bias: float | None) -> np.ndarray:
    """The prior's pull on each of theta's n-1 coordinates and on the bias."""
    pull = np.full(n, l2, dtype=np.float64)
    pull[-1] = l2 if l2_bias is None else l2_bias
    return pull


def predict(u: np.ndarray, d: np.ndarray, profile: Profile) -> np.ndarray:
    """P(correct) of ``profile`` on each query (u, d)."""
    return sigmoid(np.asarray(u, dtype=np.float64) @ np.asarray(profile.theta) + profile.bias
                   - np.asarray(d, dtype=np.float64))


def posterior_cov(u: np.ndarray, d: np.ndarray, profile: Profile, l2: float = DEFAULT_L2,
                  l2_bias: float | None = DEFAULT_L2_BIAS) -> np.ndarray:
    """Covariance of (theta, bias) under the fit's Laplace posterior: the inverse Hessian of
    ``fit_profile``'s penalised likelihood at ``profile``, fitted on these (u, d)."""
    a = np.hstack([u, np.ones((len(u), 1))])
    beta = np.array([*profile.theta, profile.bias], dtype=np.float64)
    p = sigmoid(a @ beta - d)
    hess = (a * (p * (1 - p))[:, None]).T @ a + np.diag(pulls(len(beta), l2, l2_bias))
    return np.asarray(np.linalg.inv(hess))


def log_losses(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each outcome's negative log-likelihood under ``p`` (nats; soft outcomes too)."""
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.asarray(-(y * np.log(p) + (1 - y) * np.log(1 - p)))


def log_loss(p: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """Weighted mean negative log-likelihood of soft outcomes ``y`` under ``p`` (nats)."""
    return float((w * log_losses(p, y)).sum() / w.sum())


def mean_and_se(x: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted mean of ``x`` and its standard error (Kish's effective sample size)."""
    m = float((w * x).sum() / w.sum())
    n_eff = float(w.sum() ** 2 / (w**2).sum())
    var = float((w * (x - m) ** 2).sum() / w.sum())
    return m, (var / max(n_eff - 1, 1.0)) ** 0.5


def brier(p: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """Weighted mean squared error of ``p`` against outcomes ``y``."""
    return float((w * (p - y) ** 2).sum() / w.sum())
