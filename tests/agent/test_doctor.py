"""``edgeroute doctor`` on real files: a planted world-readable key file and a corrupt
GGUF are errors (exit 1); a healthy set-up passes; cloud experts are probed for real."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from agent.cli import main
from agent.doctor import check_cpu, cpu_features
from tests.conftest import free_port

SMOLLM_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def _doctor(capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict]:
    rc = main(["doctor", "--json", "--timeout", "2", *extra])
    report = json.loads(capsys.readouterr().out)
    return rc, report


def _checks(report: dict) -> dict[str, dict]:
    return {c["check"]: c for c in report["checks"]}


def _local(monkeypatch: pytest.MonkeyPatch, *experts: dict) -> None:
    monkeypatch.setenv("EDGEROUTE_LOCAL_EXPERTS", json.dumps(list(experts)))
    monkeypatch.setenv("EDGEROUTE_ROUTER__BUNDLE", "none")


def _cloud(monkeypatch: pytest.MonkeyPatch, **expert: object) -> None:
    monkeypatch.setenv("EDGEROUTE_CLOUD_EXPERTS", json.dumps([expert]))


def test_healthy_setup_exits_zero(smollm_gguf: Path, monkeypatch, capsys) -> None:
    _local(monkeypatch, {"name": "smol", "model": str(smollm_gguf), "sha256": SMOLLM_SHA})
    rc, report = _doctor(capsys)
    checks = _checks(report)
    assert rc == 0 and report["ok"], [c for c in report["checks"] if c["status"] == "error"]
    assert checks["model smol"]["status"] == "ok" and SMOLLM_SHA[:16] in checks["model smol"][
        "detail"]
    for name in ("python", "cpu", "onnxruntime", "llama.cpp", "router bundle"):
        assert checks[name]["status"] in {"ok", "warn"}, checks[name]
    assert "CPU" in checks["llama.cpp"]["detail"] or "CUDA" in checks["llama.cpp"]["detail"]


def test_corrupt_model_is_an_error(smollm_gguf: Path, tmp_path: Path, monkeypatch,
                                   capsys) -> None:
    bad = tmp_path / "smollm-corrupt.gguf"
    data = bytearray(smollm_gguf.read_bytes()[: 1 << 20])
    data[-1] ^= 0xFF  # still a GGUF by its magic, but not the pinned bytes
    bad.write_bytes(bytes(data))
    _local(monkeypatch, {"name": "smol", "model": str(bad), "sha256": SMOLLM_SHA})
    rc, report = _doctor(capsys)
    check = _checks(report)["model smol"]
    assert rc == 1 and not report["ok"]
    assert check["status"] == "error"
    assert hashlib.sha256(bytes(data)).hexdigest() in check["detail"]


def test_unpinned_model_warns_with_its_hash(tmp_path: Path, monkeypatch, capsys) -> None:
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF" + os.urandom(4096))
    _local(monkeypatch, {"name": "tiny", "model": str(model)})
    rc, report = _doctor(capsys)
    check = _checks(report)["model tiny"]
    assert check["status"] == "warn"
    assert hashlib.sha256(model.read_bytes()).hexdigest() in check["detail"]


def test_world_readable_key_file_is_an_error(smollm_gguf: Path, tmp_path: Path, monkeypatch,
                                             capsys) -> None:
    key = tmp_path / "cloud.key"
    key.write_text("sk-test\n")
    key.chmod(0o644)
    _local(monkeypatch, {"name": "smol", "model": str(smollm_gguf), "sha256": SMOLLM_SHA})
    _cloud(monkeypatch, name="c", base_url=f"http://127.0.0.1:{free_port()}/v1", model="m",
           api_key_file=str(key))
    rc, report = _doctor(capsys)
    checks = _checks(report)
    assert rc == 1
    assert checks["secret c"]["status"] == "error" and "chmod 600" in checks["secret c"]["detail"]
    # Nothing listens there: offline is a warning (the local fallback answers), not an error.
    assert checks["cloud c"]["status"] == "warn"
    key.chmod(0o600)
    rc, report = _doctor(capsys)
    assert _checks(report)["secret c"]["status"] == "ok" and rc == 0


def test_relative_key_file_resolves_in_credentials_directory(smollm_gguf, tmp_path, monkeypatch,
                                                             capsys) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "cloud.key").write_text("sk-test")
    (creds / "cloud.key").chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    _local(monkeypatch, {"name": "smol", "model": str(smollm_gguf), "sha256": SMOLLM_SHA})
    _cloud(monkeypatch, name="c", base_url=f"http://127.0.0.1:{free_port()}/v1", model="m",
           api_key_file="cloud.key")
    _, report = _doctor(capsys)
    secret = _checks(report)["secret c"]
    assert secret["status"] == "ok" and str(creds / "cloud.key") in secret["detail"]


def test_reachable_cloud_expert_reports_latency(cloud_server: str, smollm_gguf: Path,
                                                monkeypatch, capsys) -> None:
    _local(monkeypatch, {"name": "smol", "model": str(smollm_gguf), "sha256": SMOLLM_SHA})
    _cloud(monkeypatch, name="c", base_url=cloud_server, model="smollm2-cloud")
    rc, report = _doctor(capsys)
    check = _checks(report)["cloud c"]
    assert check["status"] == "ok" and "HTTP 200 in" in check["detail"], check
    _cloud(monkeypatch, name="c", base_url=cloud_server, model="not-served-there")
    _, report = _doctor(capsys)
    assert _checks(report)["cloud c"]["status"] == "warn"


def test_invalid_settings_are_reported_not_raised(monkeypatch, capsys) -> None:
    monkeypatch.setenv("EDGEROUTE_SERVER__PORT", "70000")
    rc, report = _doctor(capsys)
    assert rc == 1 and _checks(report)["settings"]["status"] == "error"
    assert "port" in _checks(report)["settings"]["detail"]


def test_table_output_names_each_source(smollm_gguf: Path, tmp_path: Path, monkeypatch,
                                        capsys) -> None:
    device = tmp_path / "device.env"
    device.write_text("EDGEROUTE_SERVER__MAX_MESSAGES=12\n")
    monkeypatch.setenv("EDGEROUTE_ENV_FILES", str(device))
    _local(monkeypatch, {"name": "smol", "model": str(smollm_gguf), "sha256": SMOLLM_SHA})
    rc = main(["doctor"])
    out = capsys.readouterr().out
    assert rc == 0 and out.splitlines()[0].split() == ["CHECK", "STATUS", "DETAIL"]
    row = next(line for line in out.splitlines() if line.startswith("server.max_messages"))
    assert row.split()[1:] == ["12", str(device)]
    assert "environment EDGEROUTE_LOCAL_EXPERTS" in out


@pytest.mark.parametrize(("text", "arch", "status"), [
    ("flags\t: fpu sse2 avx avx2 fma avx512f\n", "x86_64", "ok"),
    ("flags\t: fpu sse2 avx\n", "x86_64", "warn"),
    ("Features\t: fp asimd evtstrm aes asimddp\n", "aarch64", "ok"),
])
def test_cpu_features_from_cpuinfo(text: str, arch: str, status: str, tmp_path: Path,
                                   monkeypatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\n" + text)
    monkeypatch.setattr("platform.machine", lambda: arch)
    assert cpu_features(cpuinfo) >= {"avx"} or arch == "aarch64"
    finding = check_cpu(cpuinfo)
    assert finding.status == status, finding
    if arch == "aarch64":
        assert "neon" in finding.detail


def test_threads_row_shows_the_default_and_how_it_was_found(smollm_gguf: Path, monkeypatch,
                                                            capsys) -> None:
    from agent.cores import physical_cores

    _local(monkeypatch, {"name": "smol", "model": str(smollm_gguf), "sha256": SMOLLM_SHA},
           {"name": "pinned", "model": str(smollm_gguf), "sha256": SMOLLM_SHA,
            "n_threads": 64})
    _, report = _doctor(capsys)
    row = _checks(report)["threads"]
    cores = physical_cores()
    assert f"smol {cores.threads} (default)" in row["detail"] and cores.how in row["detail"]
    assert "pinned 64" in row["detail"] and "onnxruntime" in row["detail"]
    assert row["status"] == "warn" and "unset n_threads" in row["detail"]  # 64 > cores


def test_a_mistyped_variable_is_a_warning_naming_the_setting(smollm_gguf: Path, monkeypatch,
                                                             capsys) -> None:
    """pydantic-settings drops an unknown top-level name without a word; doctor does not."""
    _local(monkeypatch, {"name": "smol", "model": str(smollm_gguf), "sha256": SMOLLM_SHA})
    monkeypatch.setenv("EDGEROUTE_PORT", "8080")
    rc, report = _doctor(capsys)
    row = _checks(report)["variable EDGEROUTE_PORT"]
    assert rc == 0 and row["status"] == "warn"
    assert "EDGEROUTE_SERVER__PORT" in row["detail"]
