"""Fleet < device < environment, seen through the CLI the way the system unit runs it.

The unit names the two files in ``EDGEROUTE_ENV_FILES`` (the daemon reads them) and in
``EnvironmentFile=`` (systemd copies them into the environment, later file winning). Both
paths must give the same effective settings; an operator's ``Environment=`` drop-in or a
shell variable beats both files when the daemon is run by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dotenv import dotenv_values

from tests.conftest import REPO

FLEET = """\
EDGEROUTE_SERVER__PORT=3000
EDGEROUTE_SERVER__MAX_MESSAGES=10
EDGEROUTE_ROUTER__THREADS=2
EDGEROUTE_LOCAL_EXPERTS='[{"name":"fleet-model","model":"/models/a.gguf","n_gpu_layers":0}]'
EDGEROUTE_BUDGET__EXPERT_DAILY_USD='{"gpt-4o":1.5}'
"""
DEVICE = """\
EDGEROUTE_SERVER__PORT=4000
EDGEROUTE_LOCAL_EXPERTS='[{"name":"jetson-model","model":"/models/b.gguf","n_gpu_layers":-1,"n_threads":4}]'
"""


def _config_show(env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "agent", "config", "show"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _files(tmp_path: Path) -> tuple[Path, Path]:
    fleet, device = tmp_path / "fleet.env", tmp_path / "device.env"
    fleet.write_text(FLEET)
    device.write_text(DEVICE)
    return fleet, device


def _base_env(fleet: Path, device: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGEROUTE_ENV_FILES"}
    env["EDGEROUTE_ENV_FILES"] = f"{fleet}{os.pathsep}{device}"
    return env


def _check_layers(cfg: dict) -> None:
    assert cfg["server"]["port"] == 4000  # device beats fleet
    assert cfg["server"]["max_messages"] == 10  # fleet kept where the device is silent
    assert cfg["router"]["threads"] == 2
    assert cfg["budget"]["expert_daily_usd"] == {"gpt-4o": 1.5}
    (expert,) = cfg["local_experts"]
    assert (expert["name"], expert["n_gpu_layers"], expert["n_threads"]) == (
        "jetson-model", -1, 4)


def test_daemon_reads_fleet_then_device_files(tmp_path: Path) -> None:
    _check_layers(_config_show(_base_env(*_files(tmp_path))))


def test_systemd_style_environment_gives_the_same_settings(tmp_path: Path) -> None:
    """EnvironmentFile= lines load both files into the environment, later file winning."""
    fleet, device = _files(tmp_path)
    env = _base_env(fleet, device)
    for path in (fleet, device):
        env.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    _check_layers(_config_show(env))


def test_environment_beats_both_files(tmp_path: Path) -> None:
    env = _base_env(*_files(tmp_path))
    env["EDGEROUTE_SERVER__PORT"] = "5000"
    cfg = _config_show(env)
    assert cfg["server"]["port"] == 5000
    assert cfg["server"]["max_messages"] == 10
