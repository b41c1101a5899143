"""The OpenAI API as clients send it, against a live daemon whose cloud experts are
llama-cpp-python's own server on loopback: content parts, media routed only to experts
that declare them, every field OpenAI's published reply schemas require (checked with
schemathesis against that document), logprobs passed through, ``developer`` sent as
``system`` to a peer that refuses it, and that peer's refusal leaving its breaker shut."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent.conftest import running_daemon
from tests.agent.openai_spec import chat_operation
from tests.conftest import MODEL_CACHE, free_port

MAX_CHARS = 64
SAY_HI = "Say hi."
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}


def _cloud(name: str, base_url: str, **extra: object) -> dict[str, object]:
    return {"name": name, "base_url": base_url, "model": "smollm2", "max_retries": 1,
            "retry_backoff_base_s": 0.05, "first_token_timeout_s": 60,
            "read_timeout_s": 60, "breaker_failure_threshold": 1,
            "breaker_cooldown_s": 300, **extra}


@pytest.fixture(scope="module")
def live(smollm_gguf: Path, cloud_server: str, logprobs_server: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Any]]:
    """The daemon and its runtime. Experts: ``smol`` (local, the default), ``cloud``
    (knows only system/user/assistant, as declared by default), ``cloud-img`` (the same
    peer, declared as reading images: it does not), ``cloud-dev`` (the same peer,
    declared as taking ``developer``: it does not), ``cloud-lp`` (a peer that can answer
    logprobs)."""
    from agent.runtime import build_runtime
    from agent.settings import Settings

    tmp = tmp_path_factory.mktemp("openai-api")
    s = Settings(
        paths={"data_dir": tmp / "d", "cache_dir": MODEL_CACHE, "config_dir": tmp / "c"},
        server={"port": free_port(), "max_message_chars": MAX_CHARS},
        local_experts=[{"name": "smol", "model": str(smollm_gguf), "n_threads": 2}],
        cloud_experts=[_cloud("cloud", cloud_server),
                       _cloud("cloud-img", cloud_server, modalities=["image"], streaming=False),
                       _cloud("cloud-dev", cloud_server, developer_role=True),
                       _cloud("cloud-lp", logprobs_server)],
        router={"bundle": "none"},
    )
    runtime = build_runtime(s)
    with running_daemon(s, runtime) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield client, runtime


def _ask(client: httpx.Client, content: object, **extra: object) -> httpx.Response:
    body = {"model": "smol", "max_tokens": 6, "temperature": 0, "seed": 1,
            "messages": [{"role": "user", "content": content}]} | extra
    return client.post("/v1/chat/completions", json=body)


def _events(r: httpx.Response) -> list[str]:
    return [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]


# -- content parts -------------------------------------------------------------------------
@pytest.mark.parametrize("expert", ["smol", "cloud"])
def test_text_parts_are_the_message_text_for_every_expert(live, expert: str) -> None:
    """At temperature 0 the answer to the parts is the answer to their text, joined."""
    client, _ = live
    parts = [{"type": "text", "text": "Say"}, {"type": "text", "text": "hi."}]
    as_parts = _ask(client, parts, model=expert)
    as_text = _ask(client, "Say\nhi.", model=expert)
    assert as_parts.status_code == 200, as_parts.text
    a, b = as_parts.json(), as_text.json()
    assert a["expert"] == expert
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    assert a["usage"]["prompt_tokens"] == b["usage"]["prompt_tokens"]


def test_the_message_limit_holds_for_the_joined_text(live) -> None:
    client, _ = live
    half = "x" * (MAX_CHARS // 2 + 1)  # each part fits, together they do not
    r = _ask(client, [{"type": "text", "text": half}, {"type": "text", "text": half}])
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "messages.0.content" and err["code"] == "message_too_long"
    assert _ask(client, [{"type": "text", "text": half}]).status_code == 200


def test_an_image_goes_only_to_the_expert_that_reads_images(live) -> None:
    """Routed to cloud-img, the one expert declaring images, with the parts as sent: the
    peer (a text model) fails on the list, in its own words. The local expert, which
    cannot read the image, does not stand in, and the peer's answer about this request
    (the same 500 twice) leaves its breaker shut."""
    client, runtime = live
    r = _ask(client, [{"type": "text", "text": "What is this?"}, IMAGE], model="auto")
    assert r.status_code == 503, r.text
    message = r.json()["error"]["message"]
    assert "expert 'cloud-img' failed" in message
    assert 'can only concatenate str (not "list")' in message  # the parts reached it
    assert "'smol' does not support image input" in message
    assert runtime.experts["cloud-img"].client.breaker.state == "closed"


def test_media_no_expert_reads_is_a_400_naming_the_message(live) -> None:
    client, _ = live
    msgs = [{"role": "user", "content": SAY_HI},
            {"role": "user", "content": [{"type": "text", "text": "Listen."}, AUDIO]}]
    r = client.post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 4})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "messages.1.content" and err["code"] == "unsupported_content"
    assert "audio" in err["message"] and err["type"] == "invalid_request_error"
    bad = client.post("/v1/chat/completions", json={"max_tokens": 4, "messages": [
        {"role": "user", "content": [{"type": "video", "video": {}}]}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"].startswith(
        "messages.0.content")


def test_openapi_offers_only_the_media_some_expert_reads(live) -> None:
    client, _ = live
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    branch = next(b for b in schemas["ChatMessage"]["properties"]["content"]["anyOf"]
                  if b.get("type") == "array")
    refs = {p["$ref"].rsplit("/", 1)[-1] for p in branch["items"]["oneOf"]}
    assert refs == {"TextPart", "RefusalPart", "ImagePart"}  # cloud-img reads images
    assert branch["maxItems"] == 64
    assert schemas["TextPart"]["properties"]["text"]["maxLength"] == MAX_CHARS


# -- the reply's fields, as OpenAI publishes them ---------------------------------------
@pytest.mark.parametrize("expert", ["smol", "cloud"])
def test_replies_match_openais_published_schemas(live, expert: str) -> None:
    client, _ = live
    operation = chat_operation()
    plain = _ask(client, SAY_HI, model=expert)
    operation.validate_response(plain)
    choice = plain.json()["choices"][0]
    assert choice["logprobs"] is None and choice["message"]["refusal"] is None
    assert plain.json()["system_fingerprint"].startswith("fp_")
    streamed = _ask(client, SAY_HI, model=expert, stream=True,
                    stream_options={"include_usage": True})
    operation.validate_response(streamed)
    chunks = [json.loads(e) for e in _events(streamed)[:-1]]
    assert all(c["choices"][0]["logprobs"] is None for c in chunks if c["choices"])
    assert {c["system_fingerprint"] for c in chunks} == {plain.json()["system_fingerprint"]}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_cloud_experts_logprobs_reach_the_client(live, stream: bool) -> None:
    client, _ = live
    r = _ask(client, SAY_HI, model="cloud-lp", logprobs=True, top_logprobs=2, stream=stream)
    assert r.status_code == 200, r.text
    chat_operation().validate_response(r)
    if stream:
        chunks = [json.loads(e) for e in _events(r)[:-1]]
        pieces = [(c["choices"][0]["delta"].get("content"), c["choices"][0]["logprobs"])
                  for c in chunks if c["choices"][0]["delta"].get("content")]
        tokens = [t for _, lp in pieces for t in lp["content"]]
        text = "".join(content for content, _ in pieces)
    else:
        choice = r.json()["choices"][0]
        tokens, text = choice["logprobs"]["content"], choice["message"]["content"]
    assert tokens and "".join(t["token"] for t in tokens) == text
    assert all(t["logprob"] <= 0 and len(t["top_logprobs"]) >= 1 for t in tokens)
    unasked = _ask(client, SAY_HI, model="cloud-lp")
    assert unasked.json()["choices"][0]["logprobs"] is None


def test_a_local_expert_asked_for_logprobs_answers_null(live) -> None:
    """Also through llama-cpp-python's chat handler (JSON mode), which would refuse
    top_logprobs on a model loaded without logits_all."""
    client, _ = live
    for extra in ({}, {"response_format": {"type": "json_object"}}):
        r = _ask(client, SAY_HI, logprobs=True, top_logprobs=2, **extra)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["logprobs"] is None


# -- roles, and the breaker ---------------------------------------------------------------
DEVELOPER = [{"role": "developer", "content": "Answer in one word."},
             {"role": "user", "content": "Name one primary colour."}]


def test_developer_reaches_a_cloud_expert_that_does_not_take_it_as_system(live) -> None:
    client, _ = live
    r = client.post("/v1/chat/completions", json={
        "model": "cloud", "max_tokens": 4, "temperature": 0, "messages": DEVELOPER})
    assert r.status_code == 200, r.text
    assert r.json()["expert"] == "cloud" and r.json()["routing"]["fallback_from"] is None


def test_a_peers_refusal_of_the_request_leaves_its_breaker_shut(live) -> None:
    """cloud-dev forwards ``developer``; llama.cpp's server answers a 500 carrying its
    validation errors. The local expert answers this request, and the next one still goes
    to cloud-dev: the breaker (threshold 1) did not open for a request-shaped error."""
    client, runtime = live
    r = client.post("/v1/chat/completions", json={
        "model": "cloud-dev", "max_tokens": 4, "temperature": 0, "messages": DEVELOPER})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["expert"] == "smol" and body["routing"]["fallback_from"] == "cloud-dev"
    assert "HTTP 500" in body["routing"]["reason"]
    assert runtime.experts["cloud-dev"].client.breaker.state == "closed"
    nxt = _ask(client, SAY_HI, model="cloud-dev")
    assert nxt.status_code == 200 and nxt.json()["expert"] == "cloud-dev", nxt.text
