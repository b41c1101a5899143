"""The embedded default bundle: an ability-profile router that scores every configured
expert, out of the box, including ones it was never trained on."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import BundleError
from agent.router_bundle import embedded_bundle

CLOUD = {"name": "gpt4", "base_url": "http://127.0.0.1:9/v1", "model": "gpt-4-1106-preview"}


def test_embedded_bundle_ships_small_with_profiles_for_the_default_experts() -> None:
    bundle = embedded_bundle()
    assert bundle is not None, "run `make router` to build agent/assets/router"
    size = sum(p.stat().st_size for p in bundle.iterdir())
    assert size < 25 * 2**20
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["kind"] == "irt"
    profiles = {p["name"] for p in json.loads((bundle / "profiles.json").read_text())["profiles"]}
    from agent.settings import Settings

    assert {e.name for e in Settings().local_experts} <= profiles
    assert {"gpt-4-1106-preview", "mixtral-8x7b-instruct"} <= profiles
    assert len(profiles) >= 20  # every model of the pooled public tables


def test_default_settings_route_with_the_embedded_bundle() -> None:
    from agent.runtime import build_router
    from agent.settings import Settings

    settings = Settings()
    router = build_router(settings, dict.fromkeys(e.name for e in settings.local_experts))
    assert router.mode == "profile"
    scores = router.scores("Write a Python function that reverses a list.")
    assert set(scores) == {"qwen2.5-coder-0.5b", "smollm2-135m"}
    assert all(0.0 < p < 1.0 for p in scores.values())
    described = router.describe()["experts"]
    assert described["qwen2.5-coder-0.5b"]["profile_source"] == "shipped"


def test_a_cloud_expert_is_routed_with_its_shipped_profile_and_stronger_on_math() -> None:
    from agent.runtime import build_router
    from agent.settings import Settings

    settings = Settings(cloud_experts=[CLOUD])
    router = build_router(settings, dict.fromkeys(settings.expert_names()))
    assert router.mode == "profile" and set(router.experts) == {
        "qwen2.5-coder-0.5b", "smollm2-135m", "gpt4"}
    assert router.describe()["experts"]["gpt4"] == {"profile": "gpt-4-1106-preview",
                                                   "profile_source": "shipped"}
    s = router.scores("Natalia sold clips to 48 of her friends in April, and then she sold "
                      "half as many clips in May. How many clips did Natalia sell altogether?")
    assert s["gpt4"] > s["qwen2.5-coder-0.5b"] > s["smollm2-135m"]


def test_an_unknown_expert_gets_the_prior_of_its_kind_with_a_hint() -> None:
    from agent.runtime import build_router
    from agent.settings import Settings

    settings = Settings(local_experts=[{"name": "fox", "model": "/opt/fox-1.6b.gguf"}],
                        cloud_experts=[{**CLOUD, "name": "new", "model": "brand-new-llm"}])
    router = build_router(settings, dict.fromkeys(settings.expert_names()))
    described = router.describe()["experts"]
    assert described["fox"]["profile_source"] == "prior"
    assert described["new"]["profile_source"] == "prior"
    assert "edgeroute experts calibrate new" in described["new"]["hint"]
    assert set(router.scores("hello")) == {"fox", "new"}


def test_a_corrupt_profiles_file_refuses_the_bundle_in_one_line(tmp_path: Path) -> None:
    from agent.runtime import build_router
    from agent.settings import Settings

    src = embedded_bundle()
    assert src is not None
    bad = tmp_path / "bundle"
    shutil.copytree(src, bad)
    (bad / "profiles.json").write_text("{broken")
    settings = Settings(router={"bundle": str(bad)})
    with pytest.raises(BundleError) as exc:
        build_router(settings, dict.fromkeys(settings.expert_names()))
    assert "profiles.json" in str(exc.value) and "\n" not in str(exc.value)


def test_serve_with_a_bad_profiles_file_is_a_one_line_start_up_error(
        tmp_path: Path, qwen_gguf: Path, smollm_gguf: Path) -> None:
    src = embedded_bundle()
    assert src is not None
    bad = tmp_path / "bundle"
    shutil.copytree(src, bad)
    raw = json.loads((bad / "profiles.json").read_text())
    raw["profiles"][0]["theta"] = raw["profiles"][0]["theta"][:-1]
    (bad / "profiles.json").write_text(json.dumps(raw))
    from agent.file_digest import sha256_file

    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["files"]["profiles.json"]["sha256"] = sha256_file(bad / "profiles.json")
    (bad / "manifest.json").write_text(json.dumps(manifest))
    env = {"EDGEROUTE_ROUTER__BUNDLE": str(bad)}
    import os

    out = subprocess.run([sys.executable, "-m", "agent", "serve", "--port", "0"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, **env})
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "profiles.json" in lines[0], out.stderr


def test_routing_imports_no_torch() -> None:
    code = ("import sys; from agent.runtime import build_router; "
            "from agent.settings import Settings; s = Settings(); "
            "r = build_router(s, dict.fromkeys(e.name for e in s.local_experts)); "
            "r.scores('hello'); "
            "print(sorted(m for m in ('torch','transformers','optimum') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]"
