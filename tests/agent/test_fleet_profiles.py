"""A profile fitted on one device is published to the fleet database and routes on another
device after its reload: a real ``edgeroute serve`` with the embedded irt router, a real
``edgeroute profile publish``, a real PostgreSQL server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from agent.profiles import DEVICE_PROFILES_NAME, Profile, ProfileSet
from agent.router_bundle import embedded_bundle
from tests.agent.fleet_daemons import fleet_env, start_daemon
from tests.conftest import REPO, wait_http

BODY = {"model": "auto", "messages": [{"role": "user", "content": "What is 2 + 2?"}],
        "max_tokens": 2, "temperature": 0}


def test_a_published_profile_routes_on_another_device_after_reload(
        tmp_path: Path, fleet_url: str, smollm_gguf: Path, cloud_server: str) -> None:
    bundle = embedded_bundle()
    assert bundle is not None, "the embedded irt bundle is part of the package"
    shipped = ProfileSet.read(bundle / "profiles.json")
    free = {"EDGEROUTE_CLOUD_EXPERTS": json.dumps([{
        "name": "cloud", "base_url": cloud_server, "model": "smollm2-cloud", "max_retries": 0}])}
    env_b = fleet_env(tmp_path, "dev-b", fleet_url, smollm_gguf, cloud_server) | free
    env_b.pop("EDGEROUTE_ROUTER__BUNDLE")  # the embedded irt router
    b = start_daemon("dev-b", env_b)
    try:
        wait_http(f"{b.url}/health", timeout=180, proc=b.proc)
        health = httpx.get(f"{b.url}/health", timeout=10).json()
        assert health["router"]["experts"]["cloud"]["profile_source"] == "prior"
        before = httpx.post(f"{b.url}/predict", json=BODY, timeout=120).json()["expert"]

        # Device A fitted a profile for "cloud" (what `experts calibrate` writes), one that
        # turns the decision around, and publishes it.
        env_a = fleet_env(tmp_path, "dev-a", fleet_url, smollm_gguf, cloud_server) | free
        fitted = Profile("cloud", (0.0,) * shipped.dim, -30.0 if before == "cloud" else 30.0,
                         kind="cloud", fitted_on="calibration set (test)", observations=100,
                         mean_p=0.0 if before == "cloud" else 1.0)
        ProfileSet(shipped.encoder_id, shipped.dim, {"cloud": fitted}).write(
            Path(env_a["EDGEROUTE_PATHS__DATA_DIR"]) / DEVICE_PROFILES_NAME)
        r = subprocess.run([sys.executable, "-m", "agent", "profile", "publish", "cloud"],
                           env=env_a, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "published cloud" in r.stderr

        assert httpx.post(f"{b.url}/predict", json=BODY, timeout=120).json()["expert"] == before
        reloaded = httpx.post(f"{b.url}/admin/router/reload", timeout=60).json()
        assert reloaded["experts"]["cloud"]["profile_source"] == "fleet"
        after = httpx.post(f"{b.url}/predict", json=BODY, timeout=120).json()
        assert after["expert"] == ("local" if before == "cloud" else "cloud"), after["routing"]
    finally:
        b.stop()


def test_publish_without_a_fitted_profile_is_one_line(tmp_path: Path, fleet_url: str,
                                                      smollm_gguf: Path) -> None:
    env = fleet_env(tmp_path, "dev-a", fleet_url, smollm_gguf, "http://127.0.0.1:1/v1")
    r = subprocess.run([sys.executable, "-m", "agent", "profile", "publish"], env=env,
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "experts calibrate" in r.stderr


def test_the_device_s_own_profile_wins_over_the_fleet_s() -> None:
    from agent.experts.info import ExpertInfo
    from agent.profiles import resolve

    shipped = ProfileSet("enc", 1, {"gpt-4o": Profile("gpt-4o", (0.0,), 0.5)})
    own, fleets = Profile("gpt", (1.0,), 1.0), Profile("gpt", (2.0,), 2.0)
    expert = ExpertInfo("gpt", "cloud", "gpt-4o")
    assert resolve(expert, shipped, {"gpt": own}, {"gpt": fleets}).source == "device"
    assert resolve(expert, shipped, {}, {"gpt": fleets}).profile == fleets
    assert resolve(expert, shipped, {}, {}).source == "shipped"
