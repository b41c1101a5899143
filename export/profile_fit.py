"""``edgeroute profile fit``: fit ability profiles for experts from graded outcomes, with the
router's encoder and query tower frozen.

    edgeroute profile fit --router DIR --table T [--max-per-expert N] [--seed S] --out DIR2

One expert's profile is a logistic regression on the query features the router already
computes: P(correct) = sigmoid(u(q) . theta + bias - d(q)), fitted by Newton's method with
an L2 pull toward a prior (the expert's current profile, or the median profile of its
kind): a handful of graded answers moves it where the data says, and no further. The same
fit serves ``edgeroute experts calibrate`` (a live expert on the calibration set).

DIR is a trained ``irt`` router folder or an exported ``irt`` bundle (the embedded one,
``agent/assets/router``, too); DIR2 is a copy with the fitted profiles added or replaced,
which ``edgeroute evaluate --router DIR2`` scores like any router.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from agent import ability_fit
from agent.profiles import Profile, ProfileSet, sigmoid
from export.errors import PipelineError
from export.feature_source import FeatureSource

# The fit itself is the daemon's (``agent.ability_fit``): a device refitting from its own
# outcomes and this pipeline fit profiles with one function.
DEFAULT_L2 = ability_fit.DEFAULT_L2
DEFAULT_L2_BIAS = ability_fit.DEFAULT_L2_BIAS
posterior_cov = ability_fit.posterior_cov


def fit_profile(u: np.ndarray, d: np.ndarray, y: np.ndarray, prior: Profile, name: str,
                kind: str, l2: float = DEFAULT_L2, fitted_on: str = "",
                iterations: int = 50, l2_bias: float | None = DEFAULT_L2_BIAS) -> Profile:
    """``agent.ability_fit.fit_profile``, its errors as the pipeline's."""
    try:
        return ability_fit.fit_profile(u, d, y, prior, name, kind, l2, fitted_on, iterations,
                                       l2_bias)
    except ability_fit.FitError as exc:
        raise PipelineError(str(exc)) from exc


def accuracy_spread(u: np.ndarray, d: np.ndarray, profile: Profile,
                    groups: dict[str, np.ndarray], l2: float = DEFAULT_L2,
                    l2_bias: float | None = DEFAULT_L2_BIAS, draws: int = 500,
                    seed: int = 0, cov: np.ndarray | None = None) -> dict[str, float]:
    """How sure the fit is, per group of queries (name -> row mask): the standard deviation
    of the group's mean predicted P(correct) over profiles drawn from the Laplace posterior.
    It narrows as answers grow; a wide one says: send more ``--queries``. ``cov``: the
    posterior covariance when the fit's rows are not (u, d) (adaptive calibration measures
    the families of the whole calibration set from the answers so far); None: fitted on
    (u, d)."""
    a = np.hstack([u, np.ones((len(u), 1))])
    beta = np.array([*profile.theta, profile.bias], dtype=np.float64)
    if cov is None:
        cov = posterior_cov(u, d, profile, l2, l2_bias)
    betas = np.random.default_rng(seed).multivariate_normal(beta, cov, size=draws)
    ps = sigmoid(a @ betas.T - d[:, None])  # (n, draws)
    return {name: float(ps[mask].mean(axis=0).std()) for name, mask in groups.items()}


def prior_for(profiles: ProfileSet, name: str, kind: str) -> Profile:
    return profiles.profiles.get(name) or profiles.prior(kind)


def fit_from_matrix(src: FeatureSource, queries: Sequence[str], y: np.ndarray,
                    experts: Sequence[str], rows: np.ndarray, max_per_expert: int | None,
                    seed: int, l2: float, fitted_on: str,
                    l2_bias: float | None = DEFAULT_L2_BIAS) -> list[Profile]:
    """Profiles of ``experts`` from outcome matrix ``y`` (queries x experts) on ``rows``."""
    from export.routers.irt import expert_kind

    rng = np.random.default_rng(seed)
    chosen: dict[str, np.ndarray] = {}
    for j, name in enumerate(experts):
        obs = rows[~np.isnan(y[rows, j])]
        if max_per_expert is not None and len(obs) > max_per_expert:
            obs = np.sort(rng.choice(obs, max_per_expert, replace=False))
        chosen[name] = obs
    need = sorted({int(i) for v in chosen.values() for i in v})
    u_all, d_all = src.features([queries[i] for i in need]) if need else (None, None)
    pos = {q: k for k, q in enumerate(need)}
    out = []
    for j, name in enumerate(experts):
        idx = [pos[int(i)] for i in chosen[name]]
        if not idx:
            continue
        kind = (src.profiles.profiles[name].kind if name in src.profiles.profiles
                else expert_kind(name))
        prior = prior_for(src.profiles, name, kind)
        out.append(fit_profile(u_all[idx], d_all[idx], y[chosen[name], j], prior, name, kind,
                               l2, fitted_on, l2_bias=l2_bias))
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="profile_command", required=True)
    f = sub.add_parser("fit", help="fit experts' profiles from a table's train split")
    f.add_argument("--router", type=Path, required=True,
                   help="irt router folder or irt bundle (e.g. agent/assets/router)")
    f.add_argument("--table", type=Path, required=True, help="expert table with outcomes")
    f.add_argument("--out", type=Path, required=True, help="folder for the refitted copy")
    f.add_argument("--experts", default=None, help="comma-separated experts (default: all)")
    f.add_argument("--max-per-expert", type=int, default=None,
                   help="fit each expert on at most N of its train rows (few-shot profiles)")
    f.add_argument("--seed", type=int, default=0, help="split and sampling seed")
    f.add_argument("--test-fraction", type=float, default=0.2, help="held-out share")
    f.add_argument("--l2", type=float, default=DEFAULT_L2,
                   help="pull of theta toward the prior")
    f.add_argument("--l2-bias", type=float, default=DEFAULT_L2_BIAS,
                   help="pull of the bias toward the prior")
    from export import length_fit

    length_fit.add_arguments(sub.add_parser(
        "lengths", help="fit experts' answer-length models (what prices their answers)"))
    pub = sub.add_parser("publish", help="publish profiles fitted on this device "
                         "(experts calibrate) to the fleet ledger; other devices use them "
                         "on their next reload")
    pub.add_argument("names", nargs="*", help="experts to publish (default: every profile "
                     "in <data_dir>/device-profiles.json)")
    from agent import refit_command

    refit_command.add_arguments(sub)  # update, history, revert: the daemon's own code


def publish(args: argparse.Namespace) -> int:
    """``edgeroute profile publish``: the daemon's own code does the work (agent side)."""
    from agent.fleet_db import FleetConfig
    from agent.fleet_profiles import publish as publish_profiles
    from agent.settings import load_settings

    settings = load_settings()
    cfg = FleetConfig.from_settings(settings)
    if cfg is None:
        raise PipelineError("profile publish needs a fleet ledger: set EDGEROUTE_LEDGER__URL "
                            "(or __URL_FILE)")
    done = publish_profiles(cfg, settings.paths.data_dir, args.names)
    print(f"published {', '.join(done)} to the fleet ledger as device {cfg.device_id}; "
          "devices use them after a reload (SIGHUP or POST /admin/router/reload)",
          file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.profile_command == "publish":
        return publish(args)
    if args.profile_command in ("update", "history", "revert"):
        from agent import refit_command

        return refit_command.run(args)
    from export.labels import build_matrix, split_indices
    from export.table import read_table

    if args.profile_command == "lengths":
        from export import length_fit

        return length_fit.run(args)

    src = FeatureSource.open(args.router)
    m = build_matrix(read_table(args.table))
    experts = m.experts if args.experts is None else [e.strip() for e in
                                                       args.experts.split(",") if e.strip()]
    unknown = sorted(set(experts) - set(m.experts))
    if unknown:
        raise PipelineError(f"--experts {','.join(unknown)}: not in {args.table} "
                            f"(it has {', '.join(m.experts)})")
    y = m.values["correct"][:, [m.experts.index(e) for e in experts]]
    train, _ = split_indices(m, args.seed, args.test_fraction)
    fitted = fit_from_matrix(src, m.queries, y, experts, train, args.max_per_expert,
                             args.seed, args.l2, f"profile fit: {Path(args.table).name} train",
                             l2_bias=args.l2_bias)
    src.write(src.profiles.with_profiles(fitted), args.out)
    for prof in fitted:
        print(f"{prof.name}: {prof.observations} outcomes, mean P(correct) "
              f"{prof.mean_p:.3f}", file=sys.stderr)
    print(f"{len(fitted)} profile(s) -> {args.out}", file=sys.stderr)
    return 0
