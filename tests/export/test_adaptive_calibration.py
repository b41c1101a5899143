"""Adaptive calibration's choice of the next query, on the real calibration set's features
under the embedded router bundle: each rule is the gain it claims (checked against the
brute-force posterior), the run never asks twice, resumes where it stopped, and stops at
the target sd; and ``experts calibrate --adaptive`` against a real local model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.profiles import Profile
from export.adaptive_calibration import AdaptiveConfig, information, run_adaptive
from export.profile_fit import accuracy_spread, fit_profile, posterior_cov


@pytest.fixture(scope="module")
def calibration_features() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], Profile,
                                    Profile]:
    """(u, d) of the 200 calibration queries, their dataset masks, a shipped cloud prior and
    a shipped expert standing in for the truth."""
    from agent.profile_router import IrtBundle
    from agent.router_bundle import embedded_bundle
    from export.calibration_set import load_calibration_set

    bundle = IrtBundle.load(Path(embedded_bundle()), threads=2)
    queries = load_calibration_set()
    u, d = bundle.features_batch([q.prompt for q in queries])
    groups = {ds: np.array([q.dataset == ds for q in queries])
              for ds in sorted({q.dataset for q in queries})}
    shipped = bundle.shipped
    return u, d, groups, shipped.prior("cloud"), shipped.profiles["gpt-4-1106-preview"]


def _answers(u: np.ndarray, d: np.ndarray, truth: Profile) -> np.ndarray:
    """Deterministic outcomes of ``truth``: right where its P(correct) >= a seeded draw."""
    z = u @ np.array(truth.theta) + truth.bias - d
    return (np.random.default_rng(7).random(len(u)) < 1 / (1 + np.exp(-z))).astype(float)


def test_dopt_is_the_log_det_gain_of_the_posterior_precision(calibration_features) -> None:
    u, d, _, prior, truth = calibration_features
    y = _answers(u, d, truth)
    rows = np.arange(0, 200, 10)
    prof = fit_profile(u[rows], d[rows], y[rows], prior, "new", "cloud")
    cov = posterior_cov(u[rows], d[rows], prof)
    gain = information(u, d, prof, cov, "dopt")
    a = np.hstack([u, np.ones((len(u), 1))])
    beta = np.array([*prof.theta, prof.bias])
    p = 1 / (1 + np.exp(-(a @ beta - d)))
    prec = np.linalg.inv(cov)
    _, base = np.linalg.slogdet(prec)
    brute = [np.linalg.slogdet(prec + p[i] * (1 - p[i]) * np.outer(a[i], a[i]))[1] - base
             for i in range(0, 200, 7)]
    assert np.allclose(gain[::7], brute, rtol=1e-6, atol=1e-9)
    # with the prior alone: CAT's rule p(1 - p) times the item's logit variance
    cov0 = posterior_cov(u[:0], d[:0], prior)
    first = information(u, d, prior, cov0, "dopt")
    p0 = 1 / (1 + np.exp(-(a @ np.array([*prior.theta, prior.bias]) - d)))
    assert int(np.argmax(first)) == int(np.argmax(p0 * (1 - p0) * np.einsum(
        "ij,jk,ik->i", a, cov0, a)))


def test_family_is_the_shrinkage_of_each_familys_accuracy_variance(calibration_features) -> None:
    u, d, groups, prior, truth = calibration_features
    y = _answers(u, d, truth)
    rows = np.arange(3, 200, 8)
    prof = fit_profile(u[rows], d[rows], y[rows], prior, "new", "cloud")
    cov = posterior_cov(u[rows], d[rows], prof)
    score = information(u, d, prof, cov, "family", groups)
    a = np.hstack([u, np.ones((len(u), 1))])
    p = 1 / (1 + np.exp(-(a @ np.array([*prof.theta, prof.bias]) - d)))
    w = p * (1 - p)
    grads = [(a[m] * w[m, None]).mean(axis=0) for m in groups.values()]

    def total_var(c: np.ndarray) -> float:
        return float(sum(g @ c @ g for g in grads))

    for i in (0, 57, 123, 199):
        after = np.linalg.inv(np.linalg.inv(cov) + w[i] * np.outer(a[i], a[i]))
        assert score[i] == pytest.approx(total_var(cov) - total_var(after), rel=1e-6)


def test_a_run_asks_each_query_once_and_a_rerun_resumes_it(calibration_features) -> None:
    u, d, groups, prior, truth = calibration_features
    y = _answers(u, d, truth)
    asked: list[int] = []

    def ask(i: int) -> float:
        asked.append(i)
        return float(y[i])

    cfg = AdaptiveConfig(max_queries=30)
    whole = run_adaptive(u, d, groups, prior, ask, cfg, name="new", kind="cloud")
    assert whole.stopped == "queries" and len(set(asked)) == len(asked) == 30
    assert whole.order == asked and whole.profile is not None
    assert whole.profile.observations == 30
    # interrupted after 12: the rerun starts from the stored 12 and asks the same 18 next
    again: list[int] = []
    stored = [(i, float(y[i])) for i in whole.order[:12]]
    resumed = run_adaptive(u, d, groups, prior, lambda i: again.append(i) or float(y[i]), cfg,
                           stored, name="new", kind="cloud")
    assert again == whole.order[12:] and resumed.order == whole.order
    assert resumed.profile.theta == pytest.approx(whole.profile.theta)


def test_the_run_stops_once_every_family_is_below_the_target(calibration_features) -> None:
    u, d, groups, prior, truth = calibration_features
    y = _answers(u, d, truth)
    cfg = AdaptiveConfig(max_queries=200, target_sd=0.06)
    run = run_adaptive(u, d, groups, prior, lambda i: float(y[i]), cfg, name="new",
                       kind="cloud")
    assert run.stopped == "target" and 5 <= len(run.order) < 200
    assert set(run.sd) == set(groups) and max(run.sd.values()) <= 0.06
    # the sd it stops on is the one `experts calibrate` prints, over the whole set
    rows = np.array(run.order)
    cov = posterior_cov(u[rows], d[rows], run.profile)
    assert run.sd == accuracy_spread(u, d, run.profile, groups, cov=cov)
    # one answer fewer and some family was still above the target
    short = run_adaptive(u, d, groups, prior, lambda i: float(y[i]),
                         AdaptiveConfig(max_queries=len(run.order) - 1), name="new",
                         kind="cloud")
    rows = np.array(short.order)
    sd = accuracy_spread(u, d, short.profile, groups,
                         cov=posterior_cov(u[rows], d[rows], short.profile))
    assert max(sd.values()) > 0.06


def test_an_ungradable_answer_is_not_asked_again_nor_fitted(calibration_features) -> None:
    u, d, groups, prior, truth = calibration_features
    y = _answers(u, d, truth)
    run = run_adaptive(u, d, groups, prior, lambda i: None if i % 2 else float(y[i]),
                       AdaptiveConfig(max_queries=20), name="new", kind="cloud")
    assert len(set(run.order)) == 20
    assert run.profile.observations == sum(1 for i in run.order if i % 2 == 0)


@pytest.mark.slow
def test_calibrate_adaptive_against_a_local_model_resumes(smollm_gguf: Path,
                                                          tmp_path: Path) -> None:
    from tests.conftest import MODEL_CACHE
    from tests.export.test_experts_calibrate import _run

    env = {"EDGEROUTE_PATHS__DATA_DIR": str(tmp_path / "data"),
           "EDGEROUTE_PATHS__CACHE_DIR": str(MODEL_CACHE),
           "EDGEROUTE_LOCAL_EXPERTS": json.dumps(
               [{"name": "tiny", "model": "builtin:smollm2-135m-instruct", "n_threads": 2}])}
    args = ["experts", "calibrate", "tiny", "--adaptive", "--queries", "6", "--no-progress"]
    out = _run(args, env)
    assert out.returncode == 0, out.stderr
    assert "adaptive: 6 answers (--queries 6 reached)" in out.stderr
    store = tmp_path / "data" / "calibration" / "tiny.jsonl"
    assert len(store.read_text().splitlines()) == 1 + 6
    (prof,) = json.loads((tmp_path / "data" / "device-profiles.json").read_text())["profiles"]
    assert prof["observations"] <= 6 and "adaptive" in prof["fitted_on"]
    more = _run([*args[:-2], "8", "--no-progress"], env)  # two more, the six kept
    assert more.returncode == 0, more.stderr
    assert len(store.read_text().splitlines()) == 1 + 8
