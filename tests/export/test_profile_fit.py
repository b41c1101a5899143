"""Profile fits: a known ability is recovered from its outcomes, and few outcomes stay near
the prior (the shrinkage that makes 50-query calibration safe)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.profiles import Profile
from export.errors import PipelineError
from export.profile_fit import fit_profile


def _data(n: int, theta: np.ndarray, bias: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(n, len(theta)))
    d = rng.normal(scale=0.5, size=n)
    p = 1 / (1 + np.exp(-(u @ theta + bias - d)))
    return u, d, (rng.random(n) < p).astype(float)


def test_many_outcomes_recover_the_generating_profile() -> None:
    truth = np.array([1.5, -1.0, 0.5])
    u, d, y = _data(20000, truth, 0.7)
    prior = Profile("prior", (0.0, 0.0, 0.0), 0.0)
    got = fit_profile(u, d, y, prior, "e", "cloud", l2=1.0)
    assert np.allclose(got.theta, truth, atol=0.08)
    assert got.bias == pytest.approx(0.7, abs=0.08)
    assert got.observations == 20000 and got.name == "e" and got.kind == "cloud"


def test_few_outcomes_stay_near_the_prior_and_move_toward_the_data() -> None:
    truth = np.array([0.0, 0.0, 0.0])
    u, d, y = _data(20, truth, 3.0, seed=1)  # an expert that is almost always right
    prior = Profile("prior", (0.0, 0.0, 0.0), -1.0)
    strong = fit_profile(u, d, y, prior, "e", "local", l2=100.0, l2_bias=None)
    weak = fit_profile(u, d, y, prior, "e", "local", l2=0.1, l2_bias=None)
    assert -1.0 < strong.bias < weak.bias  # more shrinkage, closer to the prior
    assert abs(strong.bias + 1.0) < 0.5


def test_a_loose_bias_takes_the_level_from_the_data_and_theta_from_the_prior() -> None:
    """50 answers of an expert far better than its prior: with theta held (l2 100) and the
    bias loose (0.1), the fitted level moves most of the way to the data's, and theta stays
    within a little of the prior's (the leave-one-out study's GPT-4 case)."""
    truth = np.array([0.0, 0.0, 0.0])
    u, d, y = _data(50, truth, 2.5, seed=3)
    prior = Profile("prior", (0.8, -0.4, 0.2), -0.5)
    tied = fit_profile(u, d, y, prior, "e", "cloud", l2=100.0, l2_bias=None)
    loose = fit_profile(u, d, y, prior, "e", "cloud", l2=100.0, l2_bias=0.1)
    assert loose.bias > tied.bias + 1.0
    assert loose.mean_p == pytest.approx(y.mean(), abs=0.08)
    assert np.allclose(loose.theta, prior.theta, atol=0.2)


def test_no_outcomes_is_an_error_naming_the_expert() -> None:
    prior = Profile("prior", (0.0,), 0.0)
    with pytest.raises(PipelineError, match="'lonely'"):
        fit_profile(np.zeros((0, 1)), np.zeros(0), np.zeros(0), prior, "lonely", "cloud")


def test_the_spread_of_predicted_accuracy_narrows_with_more_answers() -> None:
    """experts calibrate prints it beside each dataset: a fit on 20 answers is less sure
    than one on 400, and neither is certain."""
    from export.profile_fit import accuracy_spread

    truth = np.array([1.0, -0.5, 0.3])
    prior = Profile("prior", (0.0, 0.0, 0.0), 0.0)
    spreads = []
    for n in (20, 400):
        u, d, y = _data(n, truth, 0.5, seed=4)
        groups = {"a": u[:, 0] > 0, "b": u[:, 0] <= 0}
        prof = fit_profile(u, d, y, prior, "e", "cloud")
        got = accuracy_spread(u, d, prof, groups)
        assert set(got) == {"a", "b"} and all(0 < v < 0.5 for v in got.values())
        spreads.append(got)
    assert all(spreads[1][g] < spreads[0][g] / 2 for g in ("a", "b"))
