"""Settings precedence: defaults < fleet env file < device env file < environment < init."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.settings import Settings


def _env_files(monkeypatch: pytest.MonkeyPatch, *files: Path) -> None:
    monkeypatch.setenv("EDGEROUTE_ENV_FILES", ":".join(str(f) for f in files))


def test_defaults_bind_loopback_2345_with_two_local_experts() -> None:
    s = Settings()
    assert (s.server.host, s.server.port) == ("127.0.0.1", 2345)
    assert [e.name for e in s.local_experts] == ["qwen2.5-coder-0.5b", "smollm2-135m"]
    assert s.default_expert() == "qwen2.5-coder-0.5b"


def test_device_file_overrides_fleet_file(tmp_path, monkeypatch) -> None:
    fleet, device = tmp_path / "fleet.env", tmp_path / "device.env"
    fleet.write_text("EDGEROUTE_SERVER__PORT=3000\nEDGEROUTE_SERVER__MAX_MESSAGES=10\n")
    device.write_text("EDGEROUTE_SERVER__PORT=4000\n")
    _env_files(monkeypatch, fleet, device)
    s = Settings()
    assert s.server.port == 4000  # device wins
    assert s.server.max_messages == 10  # fleet value kept where the device is silent


def test_environment_overrides_env_files(tmp_path, monkeypatch) -> None:
    device = tmp_path / "device.env"
    device.write_text("EDGEROUTE_SERVER__PORT=4000\n")
    _env_files(monkeypatch, device)
    monkeypatch.setenv("EDGEROUTE_SERVER__PORT", "5000")
    assert Settings().server.port == 5000


def test_init_kwargs_override_environment(monkeypatch) -> None:
    monkeypatch.setenv("EDGEROUTE_SERVER__PORT", "5000")
    assert Settings(server={"port": 6000}).server.port == 6000


def test_missing_env_files_are_skipped(tmp_path, monkeypatch) -> None:
    real = tmp_path / "device.env"
    real.write_text("EDGEROUTE_SERVER__PORT=4100\n")
    _env_files(monkeypatch, tmp_path / "nope.env", real, tmp_path / "also-nope.env")
    assert Settings().server.port == 4100


def test_local_experts_from_json_env(monkeypatch) -> None:
    monkeypatch.setenv(
        "EDGEROUTE_LOCAL_EXPERTS",
        json.dumps([{"name": "fox", "model": "/models/fox-1.6b.gguf", "n_gpu_layers": -1}]),
    )
    s = Settings()
    assert [e.name for e in s.local_experts] == ["fox"]
    assert s.local_experts[0].n_gpu_layers == -1


def test_paths_overridable_by_env(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EDGEROUTE_PATHS__CACHE_DIR", str(tmp_path / "c"))
    assert Settings().paths.cache_dir == tmp_path / "c"


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("EDGEROUTE_SERVER__PORT", "70000", "port"),
        ("EDGEROUTE_SERVER__PORT", "abc", "port"),
        ("EDGEROUTE_LOCAL_EXPERTS", "[]", "local expert"),
        ("EDGEROUTE_ROUTER__DEFAULT_EXPERT", "nobody", "nobody"),
        ("EDGEROUTE_LOCAL_EXPERTS", '[{"name":"a","model":"x"},{"name":"a","model":"y"}]',
         "unique"),
    ],
)
def test_bad_values_are_named(monkeypatch, var, value, needle) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert needle in str(info.value)


def test_every_field_is_described() -> None:
    from pydantic import BaseModel

    def walk(model: type[BaseModel], prefix: str) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(prefix + name)
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                missing += walk(ann, prefix + name + ".")
        return missing

    from agent.expert_settings import CloudExpertSettings, LocalExpertSettings

    assert walk(Settings, "") == []
    assert walk(LocalExpertSettings, "local.") == []
    assert walk(CloudExpertSettings, "cloud.") == []
