"""Capabilities as hard constraints: context windows (a prompt that does not fit an expert
goes elsewhere, or is a 400 naming ``messages``), and the default max_tokens clamped to
the cap. Real daemon, real GGUF, llama-cpp-python's server on loopback as the cloud."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.policy import ExpertState, Request, decide, missing_capability
from cloud_bridge.usage import Prices
from tests.agent.conftest import running_daemon
from tests.conftest import free_port

# About 14 SmolLM2 tokens per sentence: 210 sentences are about 3,000 tokens.
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank. "


def _settings(tmp: Path, smollm: Path, cloud_url: str | None, **server: Any):
    from agent.settings import Settings

    cloud = ([{"name": "cloud", "base_url": cloud_url, "model": "smollm2-cloud",
               "max_retries": 0, "first_token_timeout_s": 60, "read_timeout_s": 30}]
             if cloud_url else [])
    return Settings(
        paths={"data_dir": tmp / "data", "cache_dir": tmp / "cache", "config_dir": tmp / "c"},
        server={"port": free_port(), **server},
        local_experts=[{"name": "local", "model": str(smollm), "n_threads": 2, "n_ctx": 2048}],
        cloud_experts=cloud,
        router={"bundle": "none"},
    )


@pytest.fixture(scope="module")
def local_only(smollm_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("ctx-local")
    with running_daemon(_settings(tmp, smollm_gguf, None, max_tokens_cap=16)) as url:
        yield url


def _ask(text: str, **over: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 4,
            "temperature": 0.0, **over}


def test_policy_excludes_an_expert_whose_context_is_too_small() -> None:
    experts = {"local": ExpertState("local", "local", context_tokens=2048, prompt_tokens=3100),
               "cloud": ExpertState("cloud", "cloud", Prices(1.0, 1.0), context_tokens=128_000)}
    req = Request(None, prompt_tokens=12_000, max_tokens=64)
    assert missing_capability(experts["local"], req) == (
        "messages", "prompt of up to 3100 tokens + max_tokens 64 > context of 2048")
    decision = decide({"local": 1.0}, experts, req, default_expert="local", mode="fixed")
    assert decision.expert == "cloud"
    assert "context of 2048" in decision.rejected["local"]
    # Its own count fits: the byte bound alone would not reject it.
    fits = ExpertState("local", "local", context_tokens=2048, prompt_tokens=500)
    assert missing_capability(fits, req) is None


def test_3000_token_prompt_goes_to_the_cloud(tmp_path: Path, smollm_gguf: Path,
                                             cloud_server: str) -> None:
    with running_daemon(_settings(tmp_path, smollm_gguf, cloud_server)) as url:
        r = httpx.post(f"{url}/v1/chat/completions", json=_ask(SENTENCE * 210), timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["expert"] == "cloud"
    assert 2048 < body["usage"]["prompt_tokens"] < 3500  # the cloud's own count
    assert "context of 2048" in body["routing"]["rejected"]["local"]


def test_3000_token_prompt_without_a_cloud_expert_is_400_naming_messages(
        local_only: str) -> None:
    r = httpx.post(f"{local_only}/v1/chat/completions", json=_ask(SENTENCE * 210), timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "messages" and err["code"] == "unsupported_messages"
    assert "context of 2048" in err["message"]


def test_40000_word_prompt_is_4xx_not_500(local_only: str) -> None:
    r = httpx.post(f"{local_only}/predict", json=_ask("word " * 40_000), timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "messages"


def test_short_prompt_still_fits_a_small_local_context(local_only: str) -> None:
    """The byte bound (about 2,000 + max_tokens) would not fit 2,048 tokens; the model's
    own count does."""
    r = httpx.post(f"{local_only}/predict", json=_ask("Summarise: " + "abc def " * 220),
                   timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["expert"] == "local"


def test_default_max_tokens_is_clamped_to_a_lower_cap(local_only: str) -> None:
    """default_max_tokens is 256, the cap 16: a request without max_tokens is answered."""
    body = {"messages": [{"role": "user", "content": "Count from 1 to 100."}],
            "temperature": 0.0}
    r = httpx.post(f"{local_only}/predict", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 16
    r = httpx.post(f"{local_only}/predict", json=body | {"max_tokens": 17}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_policy_routes_tools_and_json_only_to_experts_that_declare_them() -> None:
    experts = {"local": ExpertState("local", "local", tools=False, json_mode=True),
               "cloud": ExpertState("cloud", "cloud", Prices(1.0, 1.0), tools=True,
                                    json_mode=False)}
    tools = Request(None, prompt_tokens=100, max_tokens=16, tools=True)
    assert decide({}, experts, tools, default_expert="local", mode="fixed").expert == "cloud"
    json_req = Request(None, prompt_tokens=100, max_tokens=16, json_mode=True)
    assert decide({}, experts, json_req, default_expert="local", mode="fixed").expert == "local"
    both = Request(None, prompt_tokens=100, max_tokens=16, tools=True, json_mode=True)
    refused = decide({}, experts, both, default_expert="local", mode="fixed")
    assert refused.refused
    assert refused.rejected == {"local": "does not support tools",
                                "cloud": "does not support response_format"}
