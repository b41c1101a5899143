"""The embedded default bundle: the out-of-box daemon really routes between its experts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agent.router_bundle import embedded_bundle


def test_embedded_bundle_ships_small_and_matches_default_experts() -> None:
    bundle = embedded_bundle()
    assert bundle is not None, "run `make router` to build agent/assets/router"
    size = sum(p.stat().st_size for p in bundle.iterdir())
    assert size < 25 * 2**20
    manifest = json.loads((bundle / "manifest.json").read_text())
    from agent.settings import Settings

    assert manifest["experts"] == [e.name for e in Settings().local_experts]
    assert manifest["evaluation"]["gates"]["passed"] is True


def test_default_settings_route_with_the_embedded_bundle() -> None:
    from agent.runtime import build_router
    from agent.settings import Settings

    settings = Settings()
    router = build_router(settings, dict.fromkeys(e.name for e in settings.local_experts))
    assert router.mode == "onnx"
    scores = router.scores("Write a Python function that reverses a list.")
    assert set(scores) == {"qwen2.5-coder-0.5b", "smollm2-135m"}
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-5)


def test_embedded_bundle_mismatch_falls_back_to_fixed_mode_with_reason() -> None:
    from agent.runtime import build_router
    from agent.settings import Settings

    settings = Settings(local_experts=[{"name": "only-one", "model": "/x.gguf"}])
    router = build_router(settings, {"only-one": None})
    assert router.mode == "fixed"
    assert "does not fit the configured experts" in router.describe()["note"]


def test_routing_imports_no_torch() -> None:
    code = ("import sys; from agent.runtime import build_router; "
            "from agent.settings import Settings; s = Settings(); "
            "r = build_router(s, dict.fromkeys(e.name for e in s.local_experts)); "
            "r.scores('hello'); "
            "print(sorted(m for m in ('torch','transformers','optimum') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]"
