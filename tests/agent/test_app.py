"""The daemon end to end: real uvicorn, real GGUF models, real HTTP."""

from __future__ import annotations

import json

import httpx
import pytest

SEED_BODY = {"messages": [{"role": "user", "content": "Test"}]}


def test_predict_seed_body_answers_with_real_model(daemon: str) -> None:
    r = httpx.post(f"{daemon}/predict", json={**SEED_BODY, "max_tokens": 16}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert set(body) >= {"id", "created", "choices", "usage", "expert"}
    assert body["expert"] == "qwen2.5-coder-0.5b"
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] in {"stop", "length"}
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 0 <= usage["prompt_tokens_details"]["cached_tokens"] < usage["prompt_tokens"]
    assert body["routing"]["mode"] == "fixed"
    assert body["routing"]["expert"] == "qwen2.5-coder-0.5b"


def test_model_names_an_expert_directly(daemon: str) -> None:
    r = httpx.post(f"{daemon}/v1/chat/completions",
                   json={**SEED_BODY, "model": "smollm2-135m", "max_tokens": 8}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["expert"] == "smollm2-135m"
    assert r.json()["routing"]["reason"] == "requested by client"


def test_deterministic_with_temperature_zero(daemon: str) -> None:
    body = {"messages": [{"role": "user", "content": "Name a colour."}],
            "max_tokens": 8, "temperature": 0}
    a = httpx.post(f"{daemon}/predict", json=body, timeout=60).json()
    b = httpx.post(f"{daemon}/predict", json=body, timeout=60).json()
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]


def test_max_tokens_limits_generation(daemon: str) -> None:
    body = {"messages": [{"role": "user", "content": "Count from 1 to 100."}],
            "max_tokens": 5, "temperature": 0}
    r = httpx.post(f"{daemon}/predict", json=body, timeout=60).json()
    assert r["usage"]["completion_tokens"] <= 5
    assert r["choices"][0]["finish_reason"] == "length"


def _sse_events(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]


def test_streaming_sse_ends_with_done(daemon: str) -> None:
    body = {**SEED_BODY, "stream": True, "max_tokens": 12,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{daemon}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    events = _sse_events(text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["routing"]["expert"] == "qwen2.5-coder-0.5b"
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content.strip()
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1
    usage = chunks[-1]["usage"]
    assert 0 < usage["completion_tokens"] <= 12 and usage["prompt_tokens"] > 0


def test_models_lists_experts_and_auto(daemon: str) -> None:
    data = httpx.get(f"{daemon}/v1/models").json()["data"]
    assert [m["id"] for m in data] == ["auto", "qwen2.5-coder-0.5b", "smollm2-135m"]


def test_health_reports_loaded_experts_and_router_mode(daemon: str) -> None:
    h = httpx.get(f"{daemon}/health").json()
    assert h["status"] == "ok"
    assert {e["name"] for e in h["experts"]} == {"qwen2.5-coder-0.5b", "smollm2-135m"}
    assert h["router"]["mode"] == "fixed"
    assert "default expert" in h["router"]["note"]


def test_openai_sdk_plain_and_streaming(daemon: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{daemon}/v1", api_key="unused")
    out = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
    )
    assert out.choices[0].message.content
    assert out.usage.completion_tokens > 0
    pieces = []
    for chunk in client.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=8, stream=True,
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert "".join(pieces).strip()


def test_openai_sdk_sees_unknown_model_as_not_found(daemon: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{daemon}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(
            model="gpt-nope", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    assert "gpt-nope" in str(info.value)


def test_router_reload_in_fixed_mode_is_a_clear_409(daemon: str) -> None:
    r = httpx.post(f"{daemon}/admin/router/reload", timeout=30)
    assert r.status_code == 409
    assert "fixed mode" in r.json()["error"]["message"]


def test_metrics_exposes_requests_and_decisions(daemon: str) -> None:
    httpx.post(f"{daemon}/predict", json={**SEED_BODY, "max_tokens": 2}, timeout=60)
    text = httpx.get(f"{daemon}/metrics").text
    assert 'edgeroute_requests_total{expert="qwen2.5-coder-0.5b"}' in text
    assert 'edgeroute_decisions_total{kind="fixed"}' in text
    assert "edgeroute_request_latency_seconds_bucket" in text
