"""The edgeroute CLI as a user runs it: real subprocesses, real model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True,
        env=full_env, timeout=timeout,
    )


def test_predict_prints_expert_and_answer(smollm_gguf: Path) -> None:
    experts = json.dumps([{"name": "smollm2-135m", "model": str(smollm_gguf)}])
    r = run_cli("predict", "What is 2+2?", "--max-tokens", "12",
                env={"EDGEROUTE_LOCAL_EXPERTS": experts})
    assert r.returncode == 0, r.stderr
    first, *rest = r.stdout.splitlines()
    assert first.startswith("expert: smollm2-135m")
    assert "".join(rest).strip()


def test_predict_json(smollm_gguf: Path) -> None:
    experts = json.dumps([{"name": "smollm2-135m", "model": str(smollm_gguf)}])
    r = run_cli("predict", "Hi", "--max-tokens", "4", "--json",
                env={"EDGEROUTE_LOCAL_EXPERTS": experts})
    out = json.loads(r.stdout)
    assert out["expert"] == "smollm2-135m" and out["usage"]["completion_tokens"] <= 4


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["serve", "--port", "abc"], {}, "abc"),
        (["serve"], {"EDGEROUTE_SERVER__PORT": "99999"}, "server.port"),
        (["predict", "hi"], {"EDGEROUTE_LOCAL_EXPERTS": '[{"name":"x","model":"/no/such.gguf"}]'},
         "/no/such.gguf"),
        (["predict", "   "], {}, "empty"),
        (["predict", "hi", "--model", "gpt-9"], {}, "gpt-9"),
        (["frobnicate"], {}, "frobnicate"),
    ],
)
def test_cli_errors_are_one_line(args, env, needle) -> None:
    r = run_cli(*args, env=env, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0]
    assert "Traceback" not in r.stderr


def _one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("edgeroute: error: ")
    return lines[0]


@pytest.mark.parametrize("command", [["serve"], ["doctor"], ["config", "show"], ["predict", "hi"],
                                     ["experts", "list"]])
@pytest.mark.parametrize(("var", "value"), [
    ("EDGEROUTE_CLOUD_EXPERTS", "not json"),
    ("EDGEROUTE_SERVER__ALLOWED_HOSTS", "[localhost"),
])
def test_a_value_that_is_not_json_is_one_line_naming_variable_and_layer(
        command: list[str], var: str, value: str) -> None:
    line = _one_line_error(run_cli(*command, env={var: value}, timeout=60))
    assert f"{var} (the environment) is not valid JSON: " in line
    assert "line 1 column" in line  # the parse error itself


def test_a_value_that_is_not_json_in_an_env_file_names_the_file(tmp_path: Path) -> None:
    """The later file wins in the settings, so the file named is the one that was read."""
    fleet, device = tmp_path / "fleet.env", tmp_path / "device.env"
    fleet.write_text("EDGEROUTE_SERVER__PORT=2399\nEDGEROUTE_CLOUD_EXPERTS=[{name: x}]\n")
    device.write_text("EDGEROUTE_ROUTER__THREADS=1\n")
    files = f"{fleet}{os.pathsep}{device}"
    for command in (["serve"], ["doctor"]):
        line = _one_line_error(run_cli(*command, env={"EDGEROUTE_ENV_FILES": files}))
        assert f"EDGEROUTE_CLOUD_EXPERTS (env file {fleet}) is not valid JSON" in line
    device.write_text("EDGEROUTE_CLOUD_EXPERTS='also not json'\n")
    line = _one_line_error(run_cli("serve", env={"EDGEROUTE_ENV_FILES": files}))
    assert f"(env file {device})" in line


@pytest.mark.parametrize("url", ["ftp://a", "localhost:8000/v1", "https://"])
def test_a_cloud_base_url_that_is_not_http_is_a_start_up_error_naming_the_expert(
        url: str) -> None:
    cloud = json.dumps([{"name": "gpt-x", "base_url": url, "model": "m"}])
    line = _one_line_error(run_cli("serve", env={"EDGEROUTE_CLOUD_EXPERTS": cloud}))
    assert "cloud_experts.0.base_url" in line and "cloud expert 'gpt-x'" in line
    assert repr(url) in line


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    cloud = json.dumps([{"name": "c", "base_url": "http://127.0.0.1:9/v1", "model": "m",
                         "api_key": "sk-very-secret"}])
    r = run_cli("config", "show", env={"EDGEROUTE_CLOUD_EXPERTS": cloud})
    assert r.returncode == 0, r.stderr
    assert "sk-very-secret" not in r.stdout
    shown = json.loads(r.stdout)
    assert shown["server"]["port"] == 2345
    assert shown["cloud_experts"][0]["api_key"] == "**********"


SERVE_IMPORTS = """
import sys
from agent.cli import build_parser
args = build_parser().parse_args(["serve", "--port", "2399"])
import agent.app, agent.runtime
assert args.func.__name__ == "cmd_serve"
print(sorted(m for m in sys.modules if m == "export" or m.startswith("export.")))
"""


def test_serve_loads_nothing_from_the_pipeline() -> None:
    """The daemon's import path (parser, app, runtime) stays free of export.* modules."""
    r = subprocess.run([sys.executable, "-c", SERVE_IMPORTS], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_pipeline_commands_join_through_entry_points() -> None:
    from agent.cli import plugin_commands

    eps = plugin_commands()
    assert {"collect", "table", "train", "evaluate", "calibrate", "export"} <= set(eps)
    top = run_cli("--help")
    assert top.returncode == 0, top.stderr
    assert "train a router on an expert table" in top.stdout  # help loaded lazily
    train = run_cli("train", "--help")
    assert train.returncode == 0 and "--table" in train.stdout and "--router" in train.stdout


def test_a_pipeline_error_is_one_line() -> None:
    r = run_cli("train", "--table", "/no/such/table.jsonl", "--router", "mlp", "--out", "/tmp/x")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "/no/such/table.jsonl" in r.stderr


def test_serve_options_say_what_the_settings_say() -> None:
    """--host/--port help is the settings' field descriptions (no second text to drift)."""
    from agent.settings import ServerSettings

    r = run_cli("serve", "--help", env={"COLUMNS": "400"})
    assert r.returncode == 0, r.stderr
    for name in ("host", "port"):
        assert ServerSettings.model_fields[name].description in r.stdout
        assert f"EDGEROUTE_SERVER__{name.upper()}" in r.stdout
