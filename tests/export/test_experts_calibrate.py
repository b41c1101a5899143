"""``edgeroute experts calibrate`` against a real local model: graded answers on the
shipped calibration set become a device profile the daemon then resolves; a rerun resumes;
a cloud run over its spending limit stops before the first call."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MODEL_CACHE


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **env})


@pytest.mark.slow
def test_calibrate_a_local_expert_writes_a_device_profile_and_resumes(
        smollm_gguf: Path, tmp_path: Path) -> None:
    env = {"EDGEROUTE_PATHS__DATA_DIR": str(tmp_path / "data"),
           "EDGEROUTE_PATHS__CACHE_DIR": str(MODEL_CACHE),
           "EDGEROUTE_LOCAL_EXPERTS": json.dumps(
               [{"name": "tiny", "model": "builtin:smollm2-135m-instruct", "n_threads": 2}])}
    out = _run(["experts", "calibrate", "tiny", "--queries", "6", "--no-progress"], env)
    assert out.returncode == 0, out.stderr
    saved = json.loads((tmp_path / "data" / "device-profiles.json").read_text())
    (prof,) = saved["profiles"]
    assert prof["name"] == "tiny" and prof["observations"] == 6 and prof["kind"] == "local"
    assert "observed" in out.stdout and "all" in out.stdout  # the before/after table
    assert out.stdout.count(" +- ") >= 2  # each row's after carries its posterior spread
    answers = (tmp_path / "data" / "calibration" / "tiny.jsonl").read_text().splitlines()
    assert len(answers) == 1 + 6  # header + one graded answer per query
    again = _run(["experts", "calibrate", "tiny", "--queries", "6", "--no-progress"], env)
    assert again.returncode == 0, again.stderr
    assert len((tmp_path / "data" / "calibration" / "tiny.jsonl").read_text()
               .splitlines()) == 7  # nothing asked twice
    from agent.runtime import build_router
    from agent.settings import Settings

    settings = Settings(paths={"data_dir": tmp_path / "data", "cache_dir": MODEL_CACHE},
                        local_experts=json.loads(env["EDGEROUTE_LOCAL_EXPERTS"]))
    router = build_router(settings, {"tiny": None})
    assert router.describe()["experts"]["tiny"]["profile_source"] == "device"


def test_a_cloud_run_over_its_limit_stops_before_any_call(tmp_path: Path) -> None:
    env = {"EDGEROUTE_PATHS__DATA_DIR": str(tmp_path / "data"),
           "EDGEROUTE_PATHS__CACHE_DIR": str(MODEL_CACHE),
           "EDGEROUTE_CLOUD_EXPERTS": json.dumps([{
               "name": "dear", "base_url": "http://127.0.0.1:9/v1", "model": "gpt-4-1106-preview",
               "input_usd_per_mtok": 10, "output_usd_per_mtok": 30}])}
    out = _run(["experts", "calibrate", "dear", "--max-usd", "0.001"], env)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and "calibrating" not in ln]
    assert len(lines) == 1 and "--max-usd" in lines[0], out.stderr
    assert not (tmp_path / "data" / "calibration").exists()
    unknown = _run(["experts", "calibrate", "nobody"], env)
    assert unknown.returncode == 2 and "'nobody' is not configured" in unknown.stderr
