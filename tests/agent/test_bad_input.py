"""Every bad input is a 4xx with an OpenAI error body naming the field; the daemon lives on."""

from __future__ import annotations

import httpx
import pytest

OK_MSG = [{"role": "user", "content": "hi"}]

CASES = [
    # (id, body or raw bytes, expected status, expected param)
    ("malformed-json", b'{"messages": [', 400, None),
    ("not-an-object", b"[1, 2]", 400, None),
    ("missing-messages", {"model": "auto"}, 400, "messages"),
    ("empty-messages", {"messages": []}, 400, "messages"),
    ("messages-not-list", {"messages": "hi"}, 400, "messages"),
    ("unknown-role", {"messages": [{"role": "wizard", "content": "hi"}]}, 400,
     "messages.0.role"),
    ("missing-role", {"messages": [{"content": "hi"}]}, 400, "messages.0.role"),
    ("non-string-content", {"messages": [{"role": "user", "content": 42}]}, 400,
     "messages.0.content"),
    ("list-content", {"messages": [{"role": "user", "content": ["a"]}]}, 400,
     "messages.0.content"),
    # null content is valid (an assistant turn that only calls tools): a number is not.
    ("number-content", {"messages": [{"role": "user", "content": 5}]}, 400,
     "messages.0.content"),
    # A chat without a user message is valid (as in OpenAI's API): test_schema_strict.
    ("bool-as-limit", {"messages": OK_MSG, "edgeroute": {"max_cost_usd": False}}, 400,
     "edgeroute.max_cost_usd"),
    ("unknown-expert", {"messages": OK_MSG, "model": "gpt-9"}, 404, "model"),
    ("non-string-model", {"messages": OK_MSG, "model": 7}, 400, "model"),
    ("negative-max-tokens", {"messages": OK_MSG, "max_tokens": -5}, 400, "max_tokens"),
    ("zero-max-tokens", {"messages": OK_MSG, "max_tokens": 0}, 400, "max_tokens"),
    ("absurd-max-tokens", {"messages": OK_MSG, "max_tokens": 10**12}, 400, "max_tokens"),
    ("over-cap-max-tokens", {"messages": OK_MSG, "max_tokens": 100_000}, 400, "max_tokens"),
    ("string-max-tokens", {"messages": OK_MSG, "max_tokens": "many"}, 400, "max_tokens"),
    ("negative-temperature", {"messages": OK_MSG, "temperature": -1}, 400, "temperature"),
    ("absurd-temperature", {"messages": OK_MSG, "temperature": 1e9}, 400, "temperature"),
    ("nan-temperature", b'{"messages":[{"role":"user","content":"hi"}],"temperature":NaN}',
     400, None),
    ("zero-top-p", {"messages": OK_MSG, "top_p": 0}, 400, "top_p"),
    ("too-many-stops", {"messages": OK_MSG, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("n-two", {"messages": OK_MSG, "n": 2}, 400, "n"),
    ("negative-seed", {"messages": OK_MSG, "seed": -1}, 400, "seed"),
]


@pytest.mark.parametrize("path", ["/predict", "/v1/chat/completions"])
@pytest.mark.parametrize(("case", "body", "status", "param"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_4xx_openai_error(daemon, path, case, body, status, param) -> None:
    if isinstance(body, bytes):
        r = httpx.post(f"{daemon}{path}", content=body,
                       headers={"content-type": "application/json"}, timeout=30)
    else:
        r = httpx.post(f"{daemon}{path}", json=body, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param, err
    if case == "nan-temperature":
        assert err["param"] in (None, "temperature")


def test_oversized_body_is_413(daemon) -> None:
    big = {"messages": [{"role": "user", "content": "x" * 100_000}]}
    r = httpx.post(f"{daemon}/predict", json=big, timeout=30)
    assert r.status_code == 413
    assert r.json()["error"]["param"] == "body"


def test_oversized_chunked_body_is_413(daemon) -> None:
    def gen():
        yield b'{"messages":[{"role":"user","content":"'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}]}'

    r = httpx.post(f"{daemon}/predict", content=gen(),
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413


def test_too_many_messages_is_400(daemon, daemon_settings) -> None:
    n = daemon_settings.server.max_messages + 1
    msgs = [{"role": "user", "content": "a"}] * n
    r = httpx.post(f"{daemon}/predict", json={"messages": msgs}, timeout=30)
    assert r.status_code in (400, 413)
    assert r.json()["error"]["param"] in ("messages", "body")


def test_unknown_path_is_openai_404(daemon) -> None:
    r = httpx.get(f"{daemon}/v1/nope")
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found_error"


def test_wrong_method_is_405(daemon) -> None:
    r = httpx.get(f"{daemon}/predict")
    assert r.status_code == 405
    assert "error" in r.json()


def test_daemon_keeps_serving_after_bad_input(daemon) -> None:
    for _ in range(5):
        httpx.post(f"{daemon}/predict", content=b"{{{", timeout=30)
    r = httpx.post(f"{daemon}/predict",
                   json={"messages": OK_MSG, "max_tokens": 4}, timeout=60)
    assert r.status_code == 200
    assert httpx.get(f"{daemon}/health").json()["status"] == "ok"
