"""The OpenAPI document says what the server enforces, and types are strict: the
schemathesis CLI with every check (``run --checks all``) against a live daemon, plus the
four mismatches it once found, pinned as plain tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.agent.conftest import running_daemon
from tests.conftest import MODEL_CACHE, free_port

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@pytest.fixture(scope="module")
def strict_url(smollm_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Limits chosen so that every request the document allows fits the daemon: 4
    messages of 128 characters (12 bytes each at worst, as JSON escapes) fit the 16 KB
    body, and their byte bound plus max_tokens fits the 4,096-token context; one content
    part per message, so the joined text of a message's parts is its one part's (a sum
    JSON Schema cannot bound). The tiny max_tokens cap keeps the valid requests
    hypothesis finds fast."""
    from agent.settings import Settings

    tmp = tmp_path_factory.mktemp("strict")
    s = Settings(
        paths={"data_dir": tmp / "d", "cache_dir": MODEL_CACHE, "config_dir": tmp / "c"},
        server={"port": free_port(), "max_tokens_cap": 4, "max_body_bytes": 16_384,
                "max_messages": 4, "max_message_chars": 128, "max_content_parts": 1},
        local_experts=[{"name": "smol", "model": str(smollm_gguf), "n_threads": 1,
                        "n_ctx": 4096}],
        router={"bundle": "none"},
    )
    with running_daemon(s) as url:
        yield url


def test_schemathesis_run_checks_all_finds_nothing(strict_url: str) -> None:
    """Every phase, every check (negative data rejected, positive data accepted, 405 with
    Allow, SSE events, response schemas); a fixed seed keeps CI deterministic."""
    out = subprocess.run(
        [str(SCHEMATHESIS), "run", f"{strict_url}/openapi.json", "--checks", "all",
         "--max-examples", "20", "--seed", "1", "--no-color"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-8000:]
    if "No issues found" not in out.stdout:
        # One warning is by design: feedback on an id this device never gave out is a 404
        # (tests/agent/test_outcomes.py), and a fuzzer cannot know a real completion id.
        warnings = out.stdout.split("WARNINGS ===", 1)[1].split("SUMMARY ===", 1)[0]
        ops = [ln.strip() for ln in warnings.splitlines() if ln.strip().startswith("- ")]
        assert ops == ["- POST /v1/feedback"] and "Missing test data" in warnings, warnings
        assert "failed" not in out.stdout.split("Test cases:", 1)[1], out.stdout[-3000:]


def _chat(**over: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2} | over


@pytest.mark.parametrize("field, value", [
    ("edgeroute", {"max_cost_usd": False}),
    ("edgeroute", {"max_latency_ms": "100"}),
    ("temperature", True),
    ("max_tokens", "2"),
    ("seed", False),
    ("stream", "true"),
])
def test_no_bool_or_string_is_taken_for_a_number(strict_url: str, field: str,
                                                 value: object) -> None:
    r = httpx.post(f"{strict_url}/v1/chat/completions", json=_chat(**{field: value}))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].startswith(field)


def test_a_chat_without_a_user_message_is_answered(strict_url: str) -> None:
    body = {"messages": [{"role": "system", "content": "Say hi."}], "max_tokens": 2}
    r = httpx.post(f"{strict_url}/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text


def test_405_names_the_allowed_methods(strict_url: str) -> None:
    r = httpx.put(f"{strict_url}/v1/chat/completions", json=_chat())
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_openapi_states_the_configured_limits(strict_url: str) -> None:
    doc = httpx.get(f"{strict_url}/openapi.json").json()
    schemas = doc["components"]["schemas"]
    chat = schemas["ChatRequest"]["properties"]
    assert chat["messages"]["maxItems"] == 4
    assert {"type": "integer", "minimum": 1, "maximum": 4} in chat["max_tokens"]["anyOf"]
    message = schemas["ChatMessage"]["properties"]
    assert {"type": "string", "maxLength": 128} in message["content"]["anyOf"]
    # No expert declares tools here: the document allows neither tools nor tool turns.
    assert {"type": "array", "maxItems": 0} in chat["tools"]["anyOf"]
    assert "tool" not in message["role"]["enum"]
    r = httpx.post(f"{strict_url}/predict", json=_chat(max_tokens=2, max_completion_tokens=5))
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"
    r = httpx.post(f"{strict_url}/predict",
                   json={"messages": [{"role": "user", "content": "x" * 129}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.content"
