"""The systemd units: ``systemd-analyze verify`` where it exists, and the keys the
deployment relies on (layered env files, credentials, a dedicated user, hardening,
state/cache dirs wired to the settings, restart, readiness, stop grace)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

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
