"""Example env files: generated from the settings tree, committed, and parsed back.

Drift fails here: a new or re-described setting changes ``render()``, which no longer
matches ``packaging/env/*.env.example``. Regenerate with
``edgeroute config env-example --layer fleet > packaging/env/fleet.env.example`` (and
``--layer device > packaging/env/device.env.example``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from agent.envfile import DEVICE_SECTIONS, render, setting_sources, unknown_variables
from agent.settings import Settings
from tests.conftest import REPO

EXAMPLES = REPO / "packaging" / "env"
ASSIGN = re.compile(r"^#(EDGEROUTE_\w+)=(.*)$", re.M)


def _all_vars() -> set[str]:
    out = set()
    for name, field in Settings.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= {f"EDGEROUTE_{name}__{sub}".upper() for sub in ann.model_fields}
        else:
            out.add(f"EDGEROUTE_{name}".upper())
    return out


@pytest.mark.parametrize("layer", ["fleet", "device"])
def test_committed_examples_match_the_cli_output(layer: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "config", "env-example", "--layer", layer],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )
    assert proc.stdout == render(layer)
    committed = (EXAMPLES / f"{layer}.env.example").read_text()
    assert committed == proc.stdout, (
        f"packaging/env/{layer}.env.example is stale: regenerate it with "
        f"`edgeroute config env-example --layer {layer} > packaging/env/{layer}.env.example`"
    )


def test_fleet_example_documents_every_variable_once() -> None:
    text = render("fleet")
    found = ASSIGN.findall(text)
    names = [n for n, _ in found]
    assert sorted(names) == sorted(_all_vars())
    for name in names:  # each block opens with the dotted setting and its description
        key = name.removeprefix("EDGEROUTE_").lower().replace("__", ".")
        assert re.search(rf"^# {re.escape(key)}: \S", text, re.M), key


def test_device_example_is_the_device_subset() -> None:
    names = {n for n, _ in ASSIGN.findall(render("device"))}
    prefixes = tuple(f"EDGEROUTE_{s.upper()}" for s in DEVICE_SECTIONS)
    assert names and all(n.startswith(prefixes) for n in names)
    assert "EDGEROUTE_LOCAL_EXPERTS" in names and "EDGEROUTE_BUDGET__DAILY_USD" not in names


def test_uncommented_defaults_load_back_to_the_defaults(tmp_path: Path, monkeypatch) -> None:
    """Every shown default, written as-is into an env file, parses to the same value."""
    lines = [f"{n}={v}" for n, v in ASSIGN.findall(render("fleet")) if v]
    env_file = tmp_path / "fleet.env"
    env_file.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("EDGEROUTE_ENV_FILES", str(env_file))
    for var in _all_vars():
        if not var.startswith("EDGEROUTE_PATHS"):
            monkeypatch.delenv(var, raising=False)
    loaded = Settings().model_dump(exclude={"paths"})
    monkeypatch.setenv("EDGEROUTE_ENV_FILES", "")
    assert loaded == Settings().model_dump(exclude={"paths"})
    assert len(lines) > 20


def test_render_rejects_an_unknown_layer() -> None:
    with pytest.raises(ValueError, match="laptop"):
        render("laptop")


def test_sources_name_the_layer_that_won(tmp_path: Path, monkeypatch) -> None:
    fleet, device = tmp_path / "fleet.env", tmp_path / "device.env"
    fleet.write_text("EDGEROUTE_SERVER__PORT=3000\nEDGEROUTE_SERVER__MAX_MESSAGES=10\n"
                     "EDGEROUTE_ROUTER__THREADS=3\n")
    device.write_text("EDGEROUTE_SERVER__PORT=4000\nEDGEROUTE_ROUTER__THREADS=4\n")
    monkeypatch.setenv("EDGEROUTE_ENV_FILES", f"{fleet}:{device}")
    monkeypatch.setenv("EDGEROUTE_ROUTER__THREADS", "5")
    by_key = {s.key: s for s in setting_sources(Settings())}
    assert (by_key["server.port"].value, by_key["server.port"].source) == (4000, str(device))
    assert by_key["server.max_messages"].source == str(fleet)
    assert by_key["router.threads"].source == "environment EDGEROUTE_ROUTER__THREADS"
    assert by_key["router.threads"].value == 5
    assert by_key["server.host"].source == "default"


def test_sources_credit_a_file_that_systemd_copied_into_the_environment(tmp_path, monkeypatch):
    device = tmp_path / "device.env"
    device.write_text("EDGEROUTE_SERVER__PORT=4000\n")
    monkeypatch.setenv("EDGEROUTE_ENV_FILES", str(device))
    monkeypatch.setenv("EDGEROUTE_SERVER__PORT", "4000")  # what EnvironmentFile= does
    by_key = {s.key: s for s in setting_sources(Settings())}
    assert by_key["server.port"].source == f"{device} (via environment)"


def test_secrets_stay_masked_in_sources(monkeypatch) -> None:
    monkeypatch.setenv("EDGEROUTE_CLOUD_EXPERTS", '[{"name":"c","base_url":"http://x/v1",'
                       '"model":"m","api_key":"sk-very-secret"}]')
    sources = setting_sources(Settings())
    assert "sk-very-secret" not in repr(sources)
    (cloud,) = [s for s in sources if s.key == "cloud_experts"]
    assert cloud.source == "environment EDGEROUTE_CLOUD_EXPERTS"
    assert typing.cast(list, cloud.value)[0]["api_key"] == "**********"


def test_unknown_variables_name_the_typo_where_it_was_and_the_setting_meant(tmp_path) -> None:
    fleet = tmp_path / "fleet.env"
    fleet.write_text("EDGEROUTE_BUDGT__DAILY_USD=5\nEDGEROUTE_BUDGET__DAILY_USD=5\n")
    env = {"EDGEROUTE_PORT": "8080", "edgeroute_local_expert": "[]", "PATH": "/bin",
           "EDGEROUTE_SERVER__PORT": "8080", "EDGEROUTE_ENV_FILES": str(fleet),
           "EDGEROUTE_DEBUG": "1", "EDGEROUTE_TEST_MODEL_CACHE": "/tmp",
           "EDGEROUTE_CLOUD_EXPERTS": "[]", "EDGEROUTE_ROUTER": "{}",
           "EDGEROUTE_WHOLLY_UNRELATED_NAME": "x"}
    got = {u.var: u for u in unknown_variables(env, [fleet])}
    assert set(got) == {"EDGEROUTE_PORT", "EDGEROUTE_LOCAL_EXPERT", "EDGEROUTE_BUDGT__DAILY_USD",
                        "EDGEROUTE_WHOLLY_UNRELATED_NAME"}
    # the same last part wins over spelling; then the closest spelling; else no guess
    assert got["EDGEROUTE_PORT"].suggestion == "EDGEROUTE_SERVER__PORT"
    assert got["EDGEROUTE_LOCAL_EXPERT"].suggestion == "EDGEROUTE_LOCAL_EXPERTS"
    assert got["EDGEROUTE_BUDGT__DAILY_USD"].suggestion == "EDGEROUTE_BUDGET__DAILY_USD"
    assert got["EDGEROUTE_WHOLLY_UNRELATED_NAME"].suggestion is None
    assert got["EDGEROUTE_BUDGT__DAILY_USD"].where == str(fleet)
    assert got["EDGEROUTE_PORT"].where == "environment"
    assert "did you mean EDGEROUTE_SERVER__PORT?" in got["EDGEROUTE_PORT"].message()


def test_every_documented_variable_is_known() -> None:
    """No false alarm: each variable of the fleet example sets something."""
    documented = {m.group(1): m.group(2) for m in ASSIGN.finditer(render("fleet"))}
    assert len(documented) > 20
    assert unknown_variables(documented, []) == []
