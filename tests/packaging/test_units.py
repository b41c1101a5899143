"""The systemd units: ``systemd-analyze verify`` where it exists, and the keys the
deployment relies on (layered env files, credentials, a dedicated user, hardening,
state/cache dirs wired to the settings, restart, readiness, stop grace)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.settings import SMOLLM2_DEFAULT
from tests.conftest import REPO, free_port

SYSTEM_UNIT = REPO / "packaging" / "systemd" / "edgeroute.service"
USER_UNIT = REPO / "packaging" / "systemd" / "user" / "edgeroute.service"
FLEET_EXAMPLE = REPO / "packaging" / "env" / "fleet.env.example"


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections to (key, value) in order; keys repeat (EnvironmentFile=, Environment=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path}: bad line {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def _verify(unit: Path, tmp_path: Path, exec_path: str, user: bool) -> subprocess.CompletedProcess:
    """Verify a copy whose ExecStart points at this venv's real edgeroute script."""
    copy = tmp_path / "edgeroute.service"
    copy.write_text(unit.read_text().replace(exec_path, str(Path(sys.executable).parent /
                                                           "edgeroute")))
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    cmd = ["systemd-analyze", *(["--user"] if user else []), "verify", "--man=no", str(copy)]
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize(("unit", "exec_path", "user"), [
    (SYSTEM_UNIT, "/opt/edgeroute/venv/bin/edgeroute", False),
    (USER_UNIT, "%h/.local/bin/edgeroute", True),
])
def test_systemd_analyze_verify_is_clean(unit: Path, exec_path: str, user: bool,
                                         tmp_path: Path) -> None:
    proc = _verify(unit, tmp_path, exec_path, user)
    # verify exits 0 on unknown keys or bad values, printing a warning: any output fails.
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_catches_a_bad_key(tmp_path: Path) -> None:
    broken = tmp_path / "broken.service"
    broken.write_text(SYSTEM_UNIT.read_text().replace("ProtectSystem=strict",
                                                      "ProtectSystem=very"))
    proc = _verify(broken, tmp_path, "/opt/edgeroute/venv/bin/edgeroute", False)
    assert "ProtectSystem" in proc.stderr or "protect system" in proc.stderr


def test_system_unit_layers_fleet_then_device_env_files() -> None:
    unit = parse_unit(SYSTEM_UNIT)
    assert values(unit, "Service", "EnvironmentFile") == [
        "-/etc/edgeroute/fleet.env", "-/etc/edgeroute/device.env"]
    env = dict(v.split("=", 1) for v in values(unit, "Service", "Environment"))
    # The daemon reads the same files, in the same order, as systemd does.
    assert env["EDGEROUTE_ENV_FILES"] == "/etc/edgeroute/fleet.env:/etc/edgeroute/device.env"


def test_system_unit_wires_state_and_cache_dirs_into_settings() -> None:
    unit = parse_unit(SYSTEM_UNIT)
    env = dict(v.split("=", 1) for v in values(unit, "Service", "Environment"))
    name = values(unit, "Service", "StateDirectory")[0]
    assert env["EDGEROUTE_PATHS__DATA_DIR"] == f"%S/{name}"
    assert env["EDGEROUTE_PATHS__CACHE_DIR"] == f"%C/{values(unit, 'Service', 'CacheDirectory')[0]}"
    documented = set(re.findall(r"^#?(EDGEROUTE_\w+)=", FLEET_EXAMPLE.read_text(), re.M))
    unknown = {k for k in env if k.startswith("EDGEROUTE_")} - documented - {"EDGEROUTE_ENV_FILES"}
    assert not unknown, f"the unit sets variables the settings do not read: {unknown}"


def test_system_unit_runs_unprivileged_and_hardened() -> None:
    svc = dict(parse_unit(SYSTEM_UNIT)["Service"])
    assert svc.get("DynamicUser") == "yes" or svc.get("User") not in (None, "root")
    for key, want in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                      ("ProtectHome", "yes"), ("PrivateTmp", "yes"), ("UMask", "0077"),
                      ("Restart", "on-failure")]:
        assert svc.get(key) == want, key
    assert svc.get("CapabilityBoundingSet", "x") == ""


def test_system_unit_loads_credentials_and_checks_readiness() -> None:
    unit = parse_unit(SYSTEM_UNIT)
    creds = values(unit, "Service", "LoadCredential")
    assert creds and all(":" not in c or c.split(":", 1)[1].startswith("/") for c in creds)
    post = " ".join(values(unit, "Service", "ExecStartPost"))
    assert "/health" in post and "EDGEROUTE_SERVER__PORT" in post
    svc = dict(unit["Service"])
    assert svc["Type"] in {"exec", "notify"}
    assert float(svc["TimeoutStopSec"]) > 10, "stop must outlast uvicorn's 10 s grace"
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]


def test_user_unit_layers_the_users_file_last() -> None:
    unit = parse_unit(USER_UNIT)
    assert values(unit, "Service", "EnvironmentFile") == [
        "-/etc/edgeroute/fleet.env", "-/etc/edgeroute/device.env",
        "-%E/edgeroute/edgeroute.env"]
    assert values(unit, "Service", "Restart") == ["on-failure"]
    assert values(unit, "Install", "WantedBy") == ["default.target"]


def _readiness_script(seconds: int) -> str:
    """The unit's ExecStartPost shell line as systemd hands it to sh ($$ unescaped)."""
    (post,) = values(parse_unit(SYSTEM_UNIT), "Service", "ExecStartPost")
    prefix = "/bin/sh -c '"
    assert post.startswith(prefix) and post.endswith("'")
    script = post[len(prefix):-1].replace("$$", "$")
    assert "seq 1 600" in script
    return script.replace("seq 1 600", f"seq 1 {seconds * 2}")


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl")
def test_readiness_poll_waits_for_health_and_gives_up(tmp_path: Path) -> None:
    """The poll against a real daemon (SmolLM2 only) succeeds; against a dead port it fails.

    The daemon is started by hand after the poll begins, as systemd would start both."""
    port = free_port()
    env = {**os.environ, "EDGEROUTE_SERVER__PORT": str(port)}
    dead = subprocess.run(["/bin/sh", "-c", _readiness_script(1)], env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    assert dead.returncode == 1 and "did not answer" in dead.stderr
    env["EDGEROUTE_LOCAL_EXPERTS"] = json.dumps(
        [{"name": "smol", "model": SMOLLM2_DEFAULT, "n_threads": 1, "n_ctx": 256}])
    env["EDGEROUTE_ROUTER__BUNDLE"] = "none"
    poll = subprocess.Popen(["/bin/sh", "-c", _readiness_script(60)], env=env)
    daemon = subprocess.Popen([sys.executable, "-m", "agent", "serve"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert poll.wait(timeout=90) == 0
        assert daemon.poll() is None
    finally:
        poll.kill()
        daemon.terminate()
        daemon.wait(timeout=20)
