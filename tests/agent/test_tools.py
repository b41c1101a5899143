"""Tools and JSON mode through the daemon, with the real openai SDK: tool calls from a
cloud expert (llama-cpp-python's server on loopback with a function-calling chat format),
plain and streamed (the SDK's own accumulation); a 400 naming ``tools`` when no expert
declares them; JSON mode from a local expert through llama.cpp's grammar."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.agent.conftest import running_daemon
from tests.conftest import free_port, wait_http

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
FORCE = {"type": "function", "function": {"name": "get_weather"}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def tools_server(smollm_gguf: Path) -> Iterator[str]:
    """llama-cpp-python's server with the chatml-function-calling chat format (SmolLM2
    speaks ChatML): a real OpenAI-compatible peer that answers tool calls."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm_gguf),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
         "--chat_format", "chatml-function-calling", "--model_alias", "smollm2-tools"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc=proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _settings(tmp: Path, smollm: Path, cloud: dict[str, Any] | None):
    from agent.settings import Settings

    return Settings(
        paths={"data_dir": tmp / "data", "cache_dir": tmp / "cache", "config_dir": tmp / "c"},
        server={"port": free_port()},
        local_experts=[{"name": "local", "model": str(smollm), "n_threads": 2}],
        cloud_experts=[cloud] if cloud else [],
        router={"bundle": "none"},
    )


def _cloud(url: str, **over: Any) -> dict[str, Any]:
    return {"name": "cloud", "base_url": url, "model": "smollm2-tools", "max_retries": 0,
            "first_token_timeout_s": 60, "read_timeout_s": 30} | over


@pytest.fixture(scope="module")
def client(tools_server: str, smollm_gguf: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    tmp = tmp_path_factory.mktemp("tools")
    with running_daemon(_settings(tmp, smollm_gguf, _cloud(tools_server))) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def _check_call(call: Any) -> None:
    assert call.type == "function" and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments), dict)


def test_tool_call_from_the_cloud_expert_plain(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="auto", messages=ASK, tools=[WEATHER],
                                       tool_choice=FORCE, max_tokens=48, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls and len(choice.message.tool_calls) == 1
    _check_call(choice.message.tool_calls[0])
    extra = r.model_extra or {}
    assert extra["expert"] == "cloud"
    assert extra["routing"]["rejected"]["local"] == "does not support tools"


def test_tool_call_from_the_cloud_expert_streamed(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model="auto", messages=ASK, tools=[WEATHER],
                                        tool_choice=FORCE, max_tokens=48,
                                        temperature=0) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls and len(choice.message.tool_calls) == 1
    _check_call(choice.message.tool_calls[0])


def test_tools_without_an_expert_that_declares_them_is_400(
        tools_server: str, smollm_gguf: Path, tmp_path: Path) -> None:
    settings = _settings(tmp_path, smollm_gguf, _cloud(tools_server, tools=False))
    with running_daemon(settings) as url:
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError) as err:
            sdk.chat.completions.create(model="auto", messages=ASK, tools=[WEATHER],
                                        max_tokens=8)
    body = err.value.body
    assert isinstance(body, dict) and body["param"] == "tools"
    assert body["code"] == "unsupported_tools"


def test_local_json_mode_parses_20_of_20(client: openai.OpenAI) -> None:
    """response_format json_object on the local expert: llama.cpp's JSON grammar."""
    ask = [{"role": "user", "content": 'Reply with only a JSON object with two keys, "name" '
            '(a string) and "age" (a number), for a cat.'}]
    for seed in range(20):
        r = client.chat.completions.create(model="local", messages=ask, max_tokens=96,
                                           temperature=0.8, seed=seed,
                                           response_format={"type": "json_object"})
        assert (r.model_extra or {})["expert"] == "local"
        text = r.choices[0].message.content or ""
        assert isinstance(json.loads(text), dict), (seed, r.choices[0].finish_reason, text)


def test_local_expert_with_a_function_calling_format_declares_tools(
        smollm_gguf: Path, tmp_path: Path) -> None:
    """chat_format chatml-function-calling: the local expert declares tools and answers
    tool calls itself; a streamed automatic tool choice, which that format cannot do, is
    a 400 naming tool_choice, not a 500."""
    from agent.settings import Settings

    settings = Settings(
        paths={"data_dir": tmp_path / "d", "cache_dir": tmp_path / "c", "config_dir": tmp_path},
        server={"port": free_port()},
        local_experts=[{"name": "local", "model": str(smollm_gguf), "n_threads": 2,
                        "chat_format": "chatml-function-calling"}],
        router={"bundle": "none"},
    )
    with running_daemon(settings) as url:
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        r = sdk.chat.completions.create(model="auto", messages=ASK, tools=[WEATHER],
                                        tool_choice=FORCE, max_tokens=48, temperature=0)
        assert r.choices[0].finish_reason == "tool_calls"
        _check_call((r.choices[0].message.tool_calls or [None])[0])
        with pytest.raises(openai.BadRequestError) as err:
            sdk.chat.completions.create(model="auto", messages=ASK, tools=[WEATHER],
                                        tool_choice="auto", max_tokens=8, stream=True)
    body = err.value.body
    assert isinstance(body, dict) and body["param"] == "tool_choice"
