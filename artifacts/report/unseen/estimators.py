"""Few-shot estimators of a new expert's P(correct), side by side (issue #28, item 3):

- ``laplace l2/bias``: the current profile fit (``export.profile_fit.fit_profile``) toward
  the median profile of the expert's kind, at several pulls (10/3 ships);
- ``family`` / ``tier``: the same fit toward the mean profile of the known experts of its
  model family, or of its size tier (a stand-in for its price tier: most tables carry no
  prices, but a model's size, or its line's name (mini, flash, haiku, opus, pro), sets it);
  the median of its kind where no known expert shares it;
- ``knn k/kappa`` and ``cluster K/kappa``: the default fit plus a residual from the
  expert's own answers over the frozen MiniLM embeddings, as UniRoute does: the mean error
  (outcome - P) of its answered queries nearest the query (cosine, weighted), or of the
  k-means cluster the query falls in, shrunk by kappa pseudo-answers of error 0;
- ``lcb k``: the default fit scored by a lower bound, sigmoid(z - k sd), sd the logit's
  posterior sd (``posterior_cov``), so that an expert known from few answers in the
  query's direction is trusted less;
- ``anchor m``: trust the profiles' differences less than their level: the expert with the
  best accuracy over its N answers is the default, and another takes a query only when its
  P(correct) is higher by more than m (as ``local_margin`` keeps the default local expert).
  Where every expert is new, what an uncertain profile should not displace is the one the
  answers say is best overall.

Each returns P(correct) for every (query, expert) of the parts asked for; routing takes the
argmax among the experts with an outcome, as ``study_common.routed_quality`` does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from agent.profiles import Profile, ProfileSet
from export.profile_fit import fit_profile, posterior_cov
from export.routers.irt import p_matrix

PULLS = ((3.0, 1.0), (10.0, 1.0), (10.0, 3.0), (10.0, 10.0), (30.0, 3.0), (100.0, 3.0))
DEFAULT_PULL = (10.0, 3.0)
KNN = ((10, 2.0), (10, 5.0), (25, 5.0), (25, 10.0))
CLUSTERS = ((16, 5.0), (16, 20.0), (48, 5.0))
LCB = (0.5, 1.0, 2.0)
ANCHOR = (0.02, 0.05, 0.1, 0.2)
EPS = 1e-3

# (substring of the lower-cased name, family); the first match wins
FAMILIES = (
    ("gpt-4o", "gpt-4o"), ("chatgpt-4o", "gpt-4o"), ("o1-", "o1"), ("gpt-4", "gpt-4"),
    ("gpt-3.5", "gpt-3.5"), ("claude-3-5", "claude-3.5"), ("claude-3", "claude-3"),
    ("claude", "claude-1/2"), ("gemini-1.5", "gemini-1.5"), ("gemini", "gemini-2"),
    ("llama-3.1", "llama-3.1"), ("llama3", "llama-3"), ("llama-3", "llama-3"),
    ("athene", "llama-3"), ("llama-2", "llama-2"), ("code-llama", "llama-2"),
    ("wizardlm", "llama-2"), ("qwen2.5", "qwen2.5"), ("qwen2", "qwen2"), ("qwen1.5", "qwen1.5"),
    ("deepseek", "deepseek"), ("mixtral", "mixtral"), ("mistral", "mistral"),
    ("metamath", "mistral"), ("zephyr", "mistral"), ("gemma", "gemma"), ("phi-3", "phi-3"),
    ("yi-", "yi"), ("command-r", "command-r"), ("reka", "reka"), ("jamba", "jamba"),
    ("smollm", "smollm"),
)
SMALL_LINES = ("mini", "flash", "haiku", "instant", "gpt-3.5", "smollm")
LARGE_LINES = ("gpt-4", "opus", "sonnet", "-pro", "large", "o1-", "claude-v", "plus", "core",
               "deepseek-v2", "deepseek-coder-v2", "yi-large")


def family(name: str) -> str | None:
    low = name.lower()
    return next((f for key, f in FAMILIES if key in low), None)


def tier(name: str) -> str:
    """small / medium / large: the size in the name (8x7b counts 47B), else its line."""
    low = name.lower()
    if "8x7b" in low:
        return "large"
    m = re.search(r"(\d+(?:\.\d+)?)b\b", low.replace("_", "-"))
    if m:
        b = float(m.group(1))
        return "small" if b <= 10 else "medium" if b <= 40 else "large"
    if any(k in low for k in SMALL_LINES):
        return "small"
    if any(k in low for k in LARGE_LINES):
        return "large"
    return "medium"


def mean_profile(profiles: list[Profile], name: str, kind: str) -> Profile:
    theta = np.mean([p.theta for p in profiles], axis=0)
    bias = float(np.mean([p.bias for p in profiles]))
    mp = [p.mean_p for p in profiles if p.mean_p is not None]
    return Profile(name, tuple(float(t) for t in theta), bias, kind,
                   mean_p=float(np.mean(mp)) if mp else None)


def prior_of(known: ProfileSet, name: str, kind: str, how: str) -> Profile:
    """The prior a new expert is fitted toward: ``median`` (its kind's median profile, what
    ships), ``family`` or ``tier`` (the mean profile of the known experts sharing it)."""
    if how == "median":
        return known.prior(kind)
    key = family if how == "family" else tier
    mine = key(name)
    same = [p for p in known.profiles.values() if mine is not None and key(p.name) == mine]
    return mean_profile(same, f"{how}:{mine}", kind) if same else known.prior(kind)


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 20) -> np.ndarray:
    """Centroids of a plain Lloyd k-means on unit vectors (cosine)."""
    rng = np.random.default_rng(seed)
    cent = x[rng.choice(len(x), min(k, len(x)), replace=False)]
    for _ in range(iters):
        lab = (x @ cent.T).argmax(axis=1)
        for c in range(len(cent)):
            if (lab == c).any():
                v = x[lab == c].mean(axis=0)
                cent[c] = v / max(np.linalg.norm(v), 1e-9)
    return cent


class Draw:
    """One draw of answers for every expert of a fold: the rows each expert answered among
    ``pick``; fits are cached per (expert, prior, pull)."""

    def __init__(self, fold: Any, pick: np.ndarray, parts: tuple[str, ...],
                 centroids: dict[int, np.ndarray] | None = None) -> None:
        self.f, self.parts = fold, parts
        self.obs = [pick[~np.isnan(fold.y[pick, j])] for j in range(len(fold.experts))]
        self.centroids = centroids or {}
        self._fits: dict[tuple[int, str, tuple[float, float]], Profile] = {}

    def fit(self, j: int, prior: str = "median", pull: tuple[float, float] = DEFAULT_PULL
            ) -> Profile:
        key = (j, prior, pull)
        if key not in self._fits:
            f, rows = self.f, self.obs[j]
            name, kind = f.experts[j], f.kind(j)
            base = prior_of(f.known, name, kind, prior)
            self._fits[key] = (fit_profile(f.u[rows], f.d[rows], f.y[rows, j], base, name, kind,
                                           pull[0], l2_bias=pull[1]) if len(rows) else base)
        return self._fits[key]

    def columns(self, column: Callable[[int, np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
        """P per part: ``column(j, rows)`` gives expert j's P on fold positions ``rows``."""
        out = {}
        for part in self.parts:
            rows = self.f.part[part]
            out[part] = np.stack([column(j, rows) for j in range(len(self.f.experts))], axis=1)
        return out

    def laplace(self, prior: str = "median", pull: tuple[float, float] = DEFAULT_PULL
                ) -> dict[str, np.ndarray]:
        f = self.f
        return self.columns(lambda j, r: p_matrix(f.u[r], f.d[r], [self.fit(j, prior, pull)])[:, 0])

    def knn(self, k: int, kappa: float) -> dict[str, np.ndarray]:
        f = self.f

        def col(j: int, rows: np.ndarray) -> np.ndarray:
            prof = self.fit(j)
            p = p_matrix(f.u[rows], f.d[rows], [prof])[:, 0]
            seen = self.obs[j]
            if len(seen) == 0:
                return p
            resid = f.y[seen, j] - p_matrix(f.u[seen], f.d[seen], [prof])[:, 0]
            sim = np.maximum(f.x[rows] @ f.x[seen].T, 0.0)
            kk = min(k, len(seen))
            top = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
            w = np.take_along_axis(sim, top, axis=1)
            adj = (w * resid[top]).sum(axis=1) / (w.sum(axis=1) + kappa)
            return np.clip(p + adj, EPS, 1 - EPS)

        return self.columns(col)

    def cluster(self, k: int, kappa: float) -> dict[str, np.ndarray]:
        f = self.f
        cent = self.centroids[k]

        def col(j: int, rows: np.ndarray) -> np.ndarray:
            prof = self.fit(j)
            p = p_matrix(f.u[rows], f.d[rows], [prof])[:, 0]
            seen = self.obs[j]
            if len(seen) == 0:
                return p
            resid = f.y[seen, j] - p_matrix(f.u[seen], f.d[seen], [prof])[:, 0]
            lab_s = (f.x[seen] @ cent.T).argmax(axis=1)
            sums = np.bincount(lab_s, resid, minlength=len(cent))
            counts = np.bincount(lab_s, minlength=len(cent))
            adj = (sums / (counts + kappa))[(f.x[rows] @ cent.T).argmax(axis=1)]
            return np.clip(p + adj, EPS, 1 - EPS)

        return self.columns(col)

    def lcb(self, k: float, prior: str = "median",
            pull: tuple[float, float] = DEFAULT_PULL) -> dict[str, np.ndarray]:
        f = self.f

        def col(j: int, rows: np.ndarray) -> np.ndarray:
            prof = self.fit(j, prior, pull)
            seen = self.obs[j]
            cov = posterior_cov(f.u[seen], f.d[seen], prof, pull[0], pull[1])
            a = np.hstack([f.u[rows], np.ones((len(rows), 1))])
            z = a @ np.array([*prof.theta, prof.bias]) - f.d[rows]
            sd = np.sqrt(np.einsum("ij,jk,ik->i", a, cov, a))
            return 1.0 / (1.0 + np.exp(-np.clip(z - k * sd, -40, 40)))

        return self.columns(col)


def anchored(dr: Draw, p: dict[str, np.ndarray], margin: float) -> dict[str, np.ndarray]:
    """``p`` with ``margin`` added to the column of the expert best over its own answers."""
    acc = [float(dr.f.y[o, j].mean()) if len(o) else -1.0 for j, o in enumerate(dr.obs)]
    a = int(np.argmax(acc))
    out = {}
    for part, v in p.items():
        v = v.copy()
        v[:, a] += margin
        out[part] = v
    return out


def methods() -> dict[str, Callable[[Draw], dict[str, np.ndarray]]]:
    """Every candidate, by the name the report uses."""
    out: dict[str, Callable[[Draw], dict[str, np.ndarray]]] = {}
    for pull in PULLS:
        out[f"laplace {pull[0]:g}/{pull[1]:g}"] = lambda dr, p=pull: dr.laplace("median", p)
    out["family"] = lambda dr: dr.laplace("family")
    out["tier"] = lambda dr: dr.laplace("tier")
    for k, kappa in KNN:
        out[f"knn {k}/{kappa:g}"] = lambda dr, k=k, kappa=kappa: dr.knn(k, kappa)
    for k, kappa in CLUSTERS:
        out[f"cluster {k}/{kappa:g}"] = lambda dr, k=k, kappa=kappa: dr.cluster(k, kappa)
    for k in LCB:
        out[f"lcb {k:g}"] = lambda dr, k=k: dr.lcb(k)
    for m in ANCHOR:
        out[f"anchor {m:g}"] = lambda dr, m=m: anchored(dr, dr.laplace(), m)
    return out


def routed(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the outcome of the expert with the highest P among those observed, and
    which expert that is."""
    pick = np.where(~np.isnan(y), p, -np.inf).argmax(axis=1)
    return y[np.arange(len(y)), pick], pick
