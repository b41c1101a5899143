"""``edgeroute profile update / history / revert`` on a real outcomes store, the embedded
bundle's profiles and its encoder's features: the guard keeps the old profile when the refit
predicts the held-back outcomes worse, every update is logged with its figures, and revert
restores the device profiles file byte for byte (or removes it when there was none)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import MODEL_CACHE

TEXTS = [
    "What is {a} plus {b}?", "Write a python function that returns the {a}th prime.",
    "Which planet is number {a} from the sun? A) Mars B) Venus C) Earth D) Jupiter",
    "Summarise the plot of a novel about {a} sailors in {b} words.",
    "Translate the number {a} into German.", "Is {a} a prime number? Answer yes or no.",
]


@pytest.fixture(scope="module")
def features() -> tuple[np.ndarray, np.ndarray, str]:
    """u(q), d(q) of 240 queries from the embedded bundle's own encoder."""
    from agent.profile_router import IrtBundle
    from agent.router_bundle import embedded_bundle

    path = embedded_bundle()
    assert path is not None
    bundle = IrtBundle.load(path, threads=1)
    texts = [TEXTS[i % len(TEXTS)].format(a=i + 3, b=2 * i + 1) for i in range(240)]
    u, d = bundle.features_batch(texts)
    return u, d, bundle.shipped.encoder_id


def _settings(tmp: Path, **outcomes: Any) -> Any:
    from agent.settings import Settings

    return Settings(paths={"data_dir": tmp / "data", "cache_dir": MODEL_CACHE},
                    local_experts=[{"name": "local", "model": "/models/smollm2-135m.gguf"}],
                    outcomes={"refit_min_outcomes": 20, **outcomes})


def _fill(settings: Any, features: tuple[np.ndarray, np.ndarray, str], score: Any,
          n: int = 240) -> Any:
    """``n`` answers of ``local`` with feedback ``score(completion_id, held_back)``."""
    from agent.outcomes import OutcomeStore
    from agent.refit import held_back
    from agent.routing import QueryFeatures

    u, d, encoder = features
    store = OutcomeStore.of(settings)
    for i in range(n):
        cid = f"chatcmpl-{i:06d}"
        store.record_answer(cid, "local", QueryFeatures(tuple(u[i]), float(d[i]), encoder),
                            served=True, now=1e9 + i)
        store.add_outcome(cid, "feedback", score(cid, held_back(cid, 0.25)), 1.0)
    return store


def test_a_refit_that_predicts_the_held_back_part_worse_is_not_applied(
        tmp_path: Path, features: Any) -> None:
    """Fitting outcomes say the expert is always right, the held-back ones that it is always
    wrong: the refit moves toward the first, is worse on the second, and is kept out."""
    from agent.refit import update

    settings = _settings(tmp_path)
    store = _fill(settings, features, lambda cid, held: 0.0 if held else 1.0)
    res = update(settings, store)
    fit = res.fits["local"]
    assert not fit.applied and res.applied == []
    assert fit.after["log_loss"] > fit.before["log_loss"]
    assert fit.profile.bias > fit.prior.bias  # the refit did move: toward the fitting part
    assert not (settings.paths.data_dir / "device-profiles.json").exists()
    (row,) = store.refits()
    assert row.action == "update" and not row.applied and row.before is None
    assert row.summary["experts"]["local"]["before"] == fit.before  # logged, with figures


def test_an_improving_refit_is_applied_and_revert_restores_the_bytes(
        tmp_path: Path, features: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main
    from agent.profiles import Profile, ProfileSet
    from agent.refit import update

    settings = _settings(tmp_path)
    u, d, encoder = features
    # A device file written by someone else, in its own layout: revert must give it back.
    path = settings.paths.data_dir / "device-profiles.json"
    path.parent.mkdir(parents=True)
    other = ProfileSet(encoder, u.shape[1], {"other": Profile("other", (0.1,) * u.shape[1],
                                                              0.5, kind="cloud")})
    original = (json.dumps(other.as_dict(), indent=4) + "\n\n").encode()
    path.write_bytes(original)
    rng = np.random.default_rng(0)
    store = _fill(settings, features, lambda cid, held: float(rng.random() < 0.9))
    res = update(settings, store)
    assert res.applied == ["local"]
    fit = res.fits["local"]
    assert fit.after["log_loss"] < fit.before["log_loss"]
    assert fit.after["brier"] <= fit.before["brier"]
    written = ProfileSet.read(path)
    assert set(written.profiles) == {"other", "local"}  # the other profile is kept
    assert written.profiles["local"].fitted_on.startswith("outcomes:")
    # A second update starts from the same prior (the shipped profile), not from the refit.
    again = update(settings, store)
    assert again.fits["local"].prior == fit.prior
    store.close()

    monkeypatch.setenv("EDGEROUTE_PATHS__DATA_DIR", str(settings.paths.data_dir))
    monkeypatch.setenv("EDGEROUTE_LOCAL_EXPERTS", json.dumps(
        [e.model_dump(mode="json") for e in settings.local_experts]))
    assert main(["profile", "history", "--json"]) == 0
    history = json.loads(capsys.readouterr().out)
    assert [h["action"] for h in history] == ["update", "update"]
    if history[0]["applied"]:  # the second one may have moved it by a rounding: undo both
        assert main(["profile", "revert"]) == 0
        capsys.readouterr()
    assert main(["profile", "revert"]) == 0
    assert path.read_bytes() == original  # byte for byte
    assert main(["profile", "revert"]) == 2  # nothing left to undo: one line, exit 2
    assert "no applied profile update" in capsys.readouterr().err


def test_revert_removes_a_file_that_did_not_exist_and_refuses_a_changed_one(
        tmp_path: Path, features: Any) -> None:
    from agent.refit import RefitError, revert, update

    settings = _settings(tmp_path)
    rng = np.random.default_rng(1)
    store = _fill(settings, features, lambda cid, held: float(rng.random() < 0.9))
    path = settings.paths.data_dir / "device-profiles.json"
    assert update(settings, store).applied == ["local"] and path.is_file()
    path.write_text(path.read_text() + " ")  # `experts calibrate` rewrote it since
    with pytest.raises(RefitError, match="changed since update"):
        revert(settings, store)
    done = revert(settings, store, force=True)
    assert done.before is None and not path.exists()
    rows = store.refits()
    assert rows[0].action == "revert" and rows[1].undone_by == rows[0].id


def test_too_few_outcomes_fit_nothing(tmp_path: Path, features: Any) -> None:
    from agent.refit import update

    settings = _settings(tmp_path)
    store = _fill(settings, features, lambda cid, held: 1.0, n=10)
    res = update(settings, store)
    assert res.fits == {} and "10 outcomes, needs 20" in res.skipped["local"]
    assert res.refit_id is None and store.refits() == []


def test_the_fit_converges_from_a_prior_far_from_the_outcomes(features: Any) -> None:
    """Outcomes far from what the prior predicts (P 0.12, right 90% of the time): Newton's
    full step overshoots and cycles between P 0 and 1; the damped step converges."""
    from agent.ability_fit import fit_profile, predict
    from agent.profile_router import IrtBundle
    from agent.router_bundle import embedded_bundle

    u, d, _ = features
    path = embedded_bundle()
    assert path is not None
    prior = IrtBundle.load(path, threads=1).shipped.profiles["smollm2-135m"]
    y = (np.random.default_rng(0).random(len(d)) < 0.9).astype(float)
    assert predict(u, d, prior).mean() < 0.2
    fitted = fit_profile(u, d, y, prior, "local", "local")
    assert fitted.mean_p == pytest.approx(y.mean(), abs=0.05)
    heavy = fit_profile(u, d, y, prior, "local", "local", weights=np.full(len(y), 4.0))
    light = fit_profile(u, d, y, prior, "local", "local", weights=np.full(len(y), 0.05))
    assert abs(heavy.mean_p - y.mean()) < abs(light.mean_p - y.mean())  # weights count


def _observations(features: Any, y: np.ndarray) -> Any:
    from agent.outcomes import Observations

    u, d, _ = features
    n = len(y)
    return Observations([f"chatcmpl-{i:06d}" for i in range(n)], u[:n], d[:n], y,
                        np.ones(n), ["feedback"] * n)


def test_outcomes_the_profile_already_explains_change_nothing(features: Any) -> None:
    """Outcomes drawn from the current profile's own P(correct): whatever a refit fits of
    them is noise, and the guard's margin (outcomes.refit_min_z standard errors of the
    held-back gain, 2 by default) keeps the profile but in about 2% of draws. Outcomes of a much
    weaker expert get through."""
    from agent import ability_fit
    from agent.profiles import Profile
    from agent.refit import refit_expert

    u, d, _ = features
    current = Profile("local", tuple(float(x) for x in np.linspace(-0.3, 0.3, u.shape[1])),
                      0.5, kind="local")
    p = ability_fit.predict(u, d, current)
    applied = {}
    for min_z in (0.0, 2.0):
        fits = []
        for seed in range(20):
            y = (np.random.default_rng(seed).random(len(p)) < p).astype(float)
            fit = refit_expert("local", "local", _observations(features, y), current,
                               current, 0.25, 10.0, 1.0, min_z=min_z)
            assert not isinstance(fit, str)
            fits.append(fit.applied)
        applied[min_z] = sum(fits)
    # One-sided z > 2 by chance: about 2% of refits of pure noise; any gain: far more.
    assert applied[2.0] <= 2 and applied[0.0] > applied[2.0], applied
    weaker = Profile("local", current.theta, current.bias - 3.0, kind="local")
    y = (np.random.default_rng(9).random(len(p)) < ability_fit.predict(u, d, weaker)).astype(float)
    fit = refit_expert("local", "local", _observations(features, y), current, current,
                       0.25, 10.0, 1.0, min_z=2.0)
    assert not isinstance(fit, str) and fit.applied
    assert fit.after["gain"] > 2 * fit.after["gain_se"] > 0
