"""Ability profiles: the file format, resolution order, the prior, and the IRT formula."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import BundleError
from agent.experts.info import ExpertInfo
from agent.profiles import (
    Profile,
    ProfileSet,
    model_key,
    read_device_profiles,
    resolve,
)


def _set() -> ProfileSet:
    mk = lambda n, k, b, mp: Profile(n, (0.5, -0.5), b, kind=k, mean_p=mp)  # noqa: E731
    return ProfileSet("enc", 2, {p.name: p for p in (
        mk("gpt-4-1106-preview", "cloud", 2.0, 0.85), mk("claude-instant-v1", "cloud", 0.5, 0.6),
        mk("mixtral", "cloud", 1.0, 0.7), mk("qwen2.5-coder-0.5b", "local", -1.0, 0.3),
        mk("smollm2-135m", "local", -2.0, 0.15), mk("zephyr-7b", "local", 0.0, 0.45))})


def test_p_correct_is_the_logistic_of_u_theta_plus_bias_minus_difficulty() -> None:
    p = Profile("e", (1.0, 2.0), 0.5)
    z = 1.0 * 0.3 + 2.0 * -0.1 + 0.5 - 0.2
    assert p.p_correct((0.3, -0.1), 0.2) == pytest.approx(1 / (1 + math.exp(-z)))


@given(st.floats(-30, 30), st.floats(-30, 30), st.floats(-5, 5))
def test_p_correct_rises_with_ability_and_falls_with_difficulty(b1: float, b2: float,
                                                               d: float) -> None:
    lo, hi = sorted((b1, b2))
    u = (0.2, -0.4)
    assert Profile("a", (1.0, 1.0), lo).p_correct(u, d) <= Profile(
        "b", (1.0, 1.0), hi).p_correct(u, d)
    assert Profile("a", (1.0, 1.0), lo).p_correct(u, d + 1) <= Profile(
        "a", (1.0, 1.0), lo).p_correct(u, d)
    assert 0.0 <= Profile("a", (1.0, 1.0), lo).p_correct(u, d) <= 1.0


def test_round_trip_and_atomic_write(tmp_path: Path) -> None:
    s = _set()
    s.write(tmp_path / "p.json")
    back = ProfileSet.read(tmp_path / "p.json")
    assert back.profiles["mixtral"].bias == 1.0 and back.dim == 2
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".profiles-")]


@pytest.mark.parametrize("mangle,needle", [
    (lambda d: d.update(format=9), "format"),
    (lambda d: d["profiles"][0].update(theta=[1.0]), "2 finite numbers"),
    (lambda d: d["profiles"][0].update(bias="NaN"), "finite"),
    (lambda d: d["profiles"].append(dict(d["profiles"][0])), "appears twice"),
    (lambda d: d["profiles"][0].update(kind="edge"), "kind"),
    (lambda d: d["profiles"][0].pop("theta"), "theta"),
])
def test_bad_profiles_file_is_one_line_naming_the_file(tmp_path: Path, mangle, needle) -> None:
    raw = _set().as_dict()
    mangle(raw)
    (tmp_path / "p.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError) as exc:
        ProfileSet.read(tmp_path / "p.json")
    assert needle in str(exc.value) and str(tmp_path / "p.json") in str(exc.value)
    assert "\n" not in str(exc.value)


def test_unparsable_profiles_file(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(BundleError, match="unreadable profiles file"):
        ProfileSet.read(tmp_path / "p.json")


def test_resolution_order_setting_device_shipped_prior() -> None:
    shipped = _set()
    mine = Profile("my-gpt", (0.0, 0.0), 3.0, kind="cloud")
    e = ExpertInfo("my-gpt", "cloud", "gpt-4-1106-preview", profile="mixtral")
    assert resolve(e, shipped, {"my-gpt": mine}).source == "setting"
    assert resolve(e, shipped, {"my-gpt": mine}).profile.name == "mixtral"
    e = ExpertInfo("my-gpt", "cloud", "gpt-4-1106-preview")
    assert resolve(e, shipped, {"my-gpt": mine}).profile is mine
    r = resolve(e, shipped, {})
    assert (r.source, r.profile.name) == ("shipped", "gpt-4-1106-preview")
    r = resolve(ExpertInfo("x", "cloud", "some-new-model"), shipped, {})
    assert r.source == "prior" and "edgeroute experts calibrate x" in (r.note or "")


def test_prior_is_the_median_ability_profile_of_the_kind() -> None:
    s = _set()
    assert s.prior("cloud").name == "mixtral"  # 0.6 < 0.7 < 0.85
    assert s.prior("local").name == "qwen2.5-coder-0.5b"  # 0.15 < 0.3 < 0.45


def test_builtin_and_path_models_map_to_profile_names() -> None:
    assert model_key("builtin:smollm2-135m") == "smollm2-135m"
    assert model_key("/opt/models/fox-1.6b.gguf") == "fox-1.6b"
    shipped = _set()
    r = resolve(ExpertInfo("tiny", "local", "/m/smollm2-135m.gguf"), shipped, {})
    assert (r.source, r.profile.name) == ("shipped", "smollm2-135m")


def test_unknown_profile_setting_is_refused_naming_choices() -> None:
    with pytest.raises(BundleError, match="not shipped"):
        resolve(ExpertInfo("a", "cloud", "m", profile="gpt-5"), _set(), {})


def test_device_profiles_of_another_encoder_are_ignored_with_a_warning(tmp_path: Path) -> None:
    ProfileSet("other", 2, {"a": Profile("a", (0.0, 0.0), 0.0)}).write(tmp_path / "d.json")
    found, note = read_device_profiles(tmp_path / "d.json", "enc")
    assert found == {} and note is not None and "another router" in note
    found, note = read_device_profiles(tmp_path / "missing.json", "enc")
    assert found == {} and note is None


def _modern() -> ProfileSet:
    mk = lambda n, k: Profile(n, (0.1, 0.2), 0.0, kind=k, mean_p=0.5)  # noqa: E731
    names = [("gpt-4o-2024-08-06", "cloud"), ("gpt-4o-mini-2024-07-18", "cloud"),
             ("claude-3-5-sonnet-20240620", "cloud"), ("gemini-1.5-pro-002", "cloud"),
             ("meta-llama/Meta-Llama-3.1-70B-Instruct", "cloud"),
             ("Qwen/Qwen2.5-3B-Instruct", "local"), ("Qwen/Qwen2.5-7B-Instruct", "local"),
             ("meta-llama/Meta-Llama-3.1-8B-Instruct", "local"), ("google/gemma-2-2b-it", "local"),
             ("microsoft/Phi-3-mini-4k-instruct", "local"),
             ("HuggingFaceH4/zephyr-7b-beta", "local"), ("smollm2-135m", "local")]
    return ProfileSet("enc", 2, {n: mk(n, k) for n, k in names})


@pytest.mark.parametrize("kind,model,profile", [
    ("cloud", "gpt-4o", "gpt-4o-2024-08-06"),
    ("cloud", "gpt-4o-2024-08-06", "gpt-4o-2024-08-06"),
    ("cloud", "openai/gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
    ("cloud", "claude-3-5-sonnet-20240620", "claude-3-5-sonnet-20240620"),
    ("cloud", "gemini-1.5-pro-002", "gemini-1.5-pro-002"),
    ("cloud", "meta-llama/Meta-Llama-3.1-70B-Instruct", "meta-llama/Meta-Llama-3.1-70B-Instruct"),
    ("cloud", "Meta-Llama-3.1-70B-Instruct", "meta-llama/Meta-Llama-3.1-70B-Instruct"),
])
def test_cloud_names_users_type_resolve_to_shipped_profiles(kind: str, model: str,
                                                            profile: str) -> None:
    r = resolve(ExpertInfo("e", kind, model), _modern(), {})
    assert (r.source, r.profile.name, r.note) == ("shipped", profile, None)


@pytest.mark.parametrize("model,profile,quant", [
    ("/models/Qwen2.5-3B-Instruct-Q4_K_M.gguf", "Qwen/Qwen2.5-3B-Instruct", "Q4_K_M"),
    ("qwen2.5-7b-instruct-q5_k_m.gguf", "Qwen/Qwen2.5-7B-Instruct", "q5_k_m"),
    ("Meta-Llama-3.1-8B-Instruct.Q4_K_M.gguf", "meta-llama/Meta-Llama-3.1-8B-Instruct", "Q4_K_M"),
    ("gemma-2-2b-it-Q6_K.gguf", "google/gemma-2-2b-it", "Q6_K"),
    ("hf:microsoft/Phi-3-mini-4k-instruct-gguf/Phi-3-mini-4k-instruct-q4.gguf",
     "microsoft/Phi-3-mini-4k-instruct", "q4"),
    ("zephyr-7b-beta.Q5_K_M.gguf", "HuggingFaceH4/zephyr-7b-beta", "Q5_K_M"),  # no alias
])
def test_quantised_gguf_resolves_with_a_note(model: str, profile: str, quant: str) -> None:
    r = resolve(ExpertInfo("mine", "local", model), _modern(), {})
    assert (r.source, r.profile.name) == ("shipped", profile)
    assert r.note is not None and quant in r.note and "quantisation may cost" in r.note
    assert "edgeroute experts calibrate mine" in r.note
    assert r.describe()["hint"] == r.note


def test_full_precision_gguf_and_exact_names_get_no_note() -> None:
    shipped = _modern()
    r = resolve(ExpertInfo("p", "local", "Phi-3-mini-4k-instruct-fp16.gguf"), shipped, {})
    assert (r.profile.name, r.note) == ("microsoft/Phi-3-mini-4k-instruct", None)
    r = resolve(ExpertInfo("s", "local", "/m/smollm2-135m.gguf"), shipped, {})
    assert (r.profile.name, r.note) == ("smollm2-135m", None)


def test_aliases_come_after_setting_device_and_exact_names() -> None:
    shipped = _modern().with_profiles([Profile("gpt-4o", (0.0, 0.0), 1.0)])
    mine = Profile("my", (0.0, 0.0), 3.0)
    assert resolve(ExpertInfo("e", "cloud", "gpt-4o"), shipped, {}).profile.name == "gpt-4o"
    e = ExpertInfo("my", "cloud", "openai/gpt-4o-mini")
    assert resolve(e, shipped, {"my": mine}).source == "device"
    e = ExpertInfo("my", "cloud", "openai/gpt-4o-mini", profile="gemini-1.5-pro-002")
    assert resolve(e, shipped, {"my": mine}).profile.name == "gemini-1.5-pro-002"
    # a name the table lacks still falls to the prior, and a base model is not its tune
    r = resolve(ExpertInfo("q", "local", "Qwen2.5-3B-Q4_K_M.gguf"), shipped, {})
    assert r.source == "prior"
