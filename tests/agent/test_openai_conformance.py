"""Conformance to OpenAI's own published document (not ours): schemathesis generates
requests from ``CreateChatCompletionRequest`` and sends them to a live daemon; no answer
may be a 5xx, and every 200, plain or streamed, must match ``CreateChatCompletionResponse``
or ``CreateChatCompletionStreamResponse`` as OpenAI publishes them. Requests the daemon
does not serve (a tool call with no expert that declares tools, a ``function`` role) are
4xx, which these checks allow. ``tests/agent/openai_spec.py`` says what is narrowed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent.conftest import running_daemon
from tests.agent.openai_spec import chat_operation
from tests.conftest import MODEL_CACHE, free_port

EXAMPLES = {None: 100, True: 40}  # per pass: as published, and always streamed


@pytest.fixture(scope="module")
def daemon_v1(smollm_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One local expert (SmolLM2-135M), answers capped at a few tokens, messages at 2,000
    characters (a longer one is a 400), so hundreds of requests take a minute or two."""
    from agent.settings import Settings

    tmp = tmp_path_factory.mktemp("conformance")
    s = Settings(
        paths={"data_dir": tmp / "d", "cache_dir": MODEL_CACHE, "config_dir": tmp / "c"},
        server={"port": free_port(), "max_tokens_cap": 8, "max_message_chars": 2000},
        local_experts=[{"name": "smol", "model": str(smollm_gguf), "n_threads": 2,
                        "n_ctx": 4096}],
        router={"bundle": "none"},
    )
    with running_daemon(s) as url:
        yield f"{url}/v1"


def _fuzz(base_url: str, stream: bool | None, examples: int) -> Counter[str]:
    """Run schemathesis's positive generation against the daemon; the tally of answers."""
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    operation = chat_operation(stream=stream)
    seen: Counter[str] = Counter()

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def check(case: Any) -> None:
        response = case.call_and_validate(
            base_url=base_url, checks=[not_a_server_error, response_schema_conformance],
            timeout=120)
        kind = response.headers.get("content-type", ["?"])[0].split(";")[0]
        seen[f"{response.status_code} {kind}"] += 1

    check()
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("stream", [None, True], ids=["as-published", "streamed"])
def test_openai_published_schema_no_5xx_and_conforming_200s(daemon_v1: str,
                                                            stream: bool | None) -> None:
    seen = _fuzz(daemon_v1, stream, EXAMPLES[stream])
    media = "text/event-stream" if stream else "application/json"
    # The run must have judged real answers, not only refusals.
    assert seen[f"200 {media}"] >= 5, seen
    assert not any(k.startswith("5") for k in seen), seen


def test_the_published_schema_rejects_a_reply_without_logprobs_or_refusal() -> None:
    """The check can fail: a reply as the daemon sent it before (no ``logprobs`` on the
    choice, no ``refusal`` on the message) violates OpenAI's schema; with them it passes."""
    from schemathesis.core.failures import FailureGroup

    operation = chat_operation()
    choice = {"index": 0, "finish_reason": "stop",
              "message": {"role": "assistant", "content": "Hi"}}
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "smol",
            "choices": [choice]}

    def reply(b: dict[str, Any]) -> httpx.Response:
        r = httpx.Response(200, json=b, request=httpx.Request(
            "POST", "http://127.0.0.1/v1/chat/completions"))
        r.elapsed = timedelta(0)  # as if it came over the wire
        return r

    with pytest.raises(FailureGroup):
        operation.validate_response(reply(body))
    fixed = {**body, "choices": [{**choice, "logprobs": None,
                                  "message": {**choice["message"], "refusal": None}}]}
    operation.validate_response(reply(fixed))
