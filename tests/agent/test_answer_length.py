"""Expected answer lengths (agent/answer_length.py): the capped mean against a Monte-Carlo
estimate of the same distribution, its properties, the device's correction, and the
profile field that carries a model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.answer_length import LengthCorrection, LengthModel, capped_mean
from agent.errors import BundleError
from agent.profiles import ProfileSet


@pytest.mark.parametrize(("mu", "sigma", "cap"), [(2.0, 0.5, 256), (5.5, 1.0, 256),
                                                  (0.7, 0.1, 4), (6.0, 2.0, 1024),
                                                  (3.0, 0.0, 256), (8.0, 0.3, 100)])
def test_capped_mean_is_the_mean_of_the_answer_as_delivered(mu, sigma, cap) -> None:
    """E[min(T, cap)] with log(1 + T) ~ N(mu, sigma): drawn, not derived."""
    rng = np.random.default_rng(0)
    t = np.expm1(rng.normal(mu, sigma, 400_000))
    assert capped_mean(mu, sigma, cap) == pytest.approx(np.minimum(t, cap).mean(), rel=0.01)


@given(st.floats(-5, 12), st.floats(0, 3), st.integers(1, 8192), st.floats(0.01, 2))
def test_capped_mean_stays_within_the_cap_and_grows_with_mu(mu, sigma, cap, step) -> None:
    got = capped_mean(mu, sigma, cap)
    assert 0.0 <= got <= cap + 1e-9
    assert capped_mean(mu + step, sigma, cap) >= got - 1e-9
    assert capped_mean(mu, sigma, cap + 10) >= got - 1e-9


def test_a_per_query_model_reads_the_query_vector() -> None:
    m = LengthModel(bias=1.0, sigma=0.0, theta=(2.0, 0.0))
    assert m.mu((1.0, 5.0)) == 3.0 and m.mu(None) == 1.0  # no features: its bias
    assert m.expected_tokens((1.0, 5.0), 1000) == pytest.approx(math.exp(3.0) - 1)
    assert m.expected_tokens((1.0, 5.0), 10) == 10  # capped


def test_the_device_correction_follows_real_answers_and_cut_ones_only_raise_it() -> None:
    model = LengthModel(bias=math.log1p(20), sigma=0.0)
    c = LengthCorrection(alpha=0.5)
    assert c.expected("e", model, None, 500) == pytest.approx(20)
    for _ in range(30):  # answers of 100 tokens
        c.observe("e", model, None, 100, cut=False)
    assert c.expected("e", model, None, 500) == pytest.approx(100, rel=1e-3)
    before = c.offsets["e"]
    c.observe("e", model, None, 10, cut=True)  # cut at 10: says only "longer than 10"
    assert c.offsets["e"] == before
    c.observe("e", model, None, 400, cut=True)  # cut at 400: longer than thought
    assert c.offsets["e"] > before
    assert c.expected("x", None, None, 500) is None  # no model: unknown, max_tokens prices it


def test_profiles_carry_a_length_model_and_refuse_a_bad_one() -> None:
    raw = {"format": 1, "encoder_id": "x", "dim": 2, "profiles": [
        {"name": "a", "theta": [0.1, 0.2], "bias": 0.0, "kind": "cloud",
         "length": {"bias": 3.0, "sigma": 0.4, "theta": [0.5, -0.5], "observations": 9}},
        {"name": "b", "theta": [0.0, 0.0], "bias": 0.0, "kind": "cloud"}]}
    ps = ProfileSet.parse(raw, "t")
    assert ps.profiles["a"].length == LengthModel(3.0, 0.4, (0.5, -0.5), 9)
    assert ps.profiles["b"].length is None
    assert ProfileSet.parse(ps.as_dict(), "again").profiles == ps.profiles  # round trip
    assert ps.length_prior("cloud") == ps.profiles["a"].length  # b borrows a's
    raw["profiles"][0]["length"]["theta"] = [1.0]
    with pytest.raises(BundleError, match="length theta must have 2"):
        ProfileSet.parse(raw, "t")
