"""The route-only call: ``POST /v1/route`` and ``edgeroute route`` decide as a chat request
would be decided, call no expert and leave the ledger as it was; ``/health`` and
``edgeroute doctor`` show how decisions split and which expert is never chosen."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent.conftest import running_daemon
from tests.cloud_bridge.faultproxy import FaultProxy
from tests.conftest import MODEL_CACHE, free_port

QUERIES = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?",
    "Write a python function to find the first repeated character in a given string.",
    "Which of these is a noble gas? A) Oxygen B) Argon C) Nitrogen D) Carbon",
    "Does regular aspirin use reduce the risk of colorectal cancer?",
    "Say hello.",
]


@pytest.fixture(scope="module")
def proxy(cloud_server: str) -> Iterator[FaultProxy]:
    """The loopback peer behind a proxy that records every connection made to it."""
    port = int(cloud_server.rsplit(":", 1)[1].split("/")[0])
    with FaultProxy(port) as p:
        yield p


def _settings(tmp: Path, proxy: FaultProxy, smollm_gguf: Path, **policy: Any) -> Any:
    from agent.settings import Settings

    return Settings(
        paths={"data_dir": tmp / "data", "cache_dir": MODEL_CACHE, "config_dir": tmp / "cfg"},
        server={"port": free_port()},
        local_experts=[{"name": "local", "model": str(smollm_gguf), "n_threads": 2,
                        "profile": "qwen2.5-coder-0.5b"}],
        cloud_experts=[{"name": "gpt4", "base_url": proxy.base_url(), "model": "smollm2-cloud",
                        "input_usd_per_mtok": 10, "output_usd_per_mtok": 30,
                        "profile": "gpt-4-1106-preview",
                        "first_token_timeout_s": 60}],  # a loaded CI machine's peer is slow
        policy=policy,
    )


def _ask(text: str, **kw: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": text}], **kw}


def _ledger_rows(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "ledger.sqlite3") as db:
        return int(db.execute("SELECT COUNT(*) FROM spend").fetchone()[0])


def test_a_hundred_route_calls_call_no_expert_and_touch_no_ledger(
        tmp_path: Path, proxy: FaultProxy, smollm_gguf: Path) -> None:
    settings = _settings(tmp_path, proxy, smollm_gguf, usd_per_correct=0.01)
    before = len(proxy.applied)
    with running_daemon(settings) as url, httpx.Client(base_url=url, timeout=60) as c:
        chosen = set()
        for i in range(100):
            r = c.post("/v1/route", json=_ask(QUERIES[i % len(QUERIES)], max_tokens=64))
            assert r.status_code == 200, r.text
            body = r.json()
            routing = body["routing"]
            assert body["object"] == "edgeroute.route" and body["model"] == routing["expert"]
            assert set(routing["experts"]) == {"local", "gpt4"}
            for a in routing["experts"].values():
                assert a["expected_cost_usd"] <= a["worst_case_usd"] + 1e-12
                assert 0 <= a["expected_output_tokens"] <= 64
            chosen.add(routing["expert"])
        assert chosen == {"local", "gpt4"}  # both are chosen among these queries
        metrics = c.get("/metrics").text
        assert "edgeroute_route_calls_total 100.0" in metrics
        assert "edgeroute_requests_total{" not in metrics  # no answer was served
        assert 'edgeroute_local_decode_steps_total{expert="local"} 0.0' in metrics
        assert len(proxy.applied) == before  # nothing reached the cloud peer
        assert _ledger_rows(settings.paths.data_dir) == 0
        # the same request served: the decision the route call showed, and the peer is hit
        ask = _ask(QUERIES[0], max_tokens=8, temperature=0)
        routed = c.post("/v1/route", json=ask).json()["routing"]
        served = c.post("/v1/chat/completions", json=ask).json()
        assert routed["expert"] in (served["routing"]["expert"],
                                    served["routing"]["fallback_from"])
        assert served["routing"]["scores"] == routed["scores"]
        assert served["routing"]["experts"][routed["expert"]]["expected_cost_usd"] == \
            routed["experts"][routed["expert"]]["expected_cost_usd"]
        health = c.get("/health").json()
    if routed["expert"] == "gpt4":
        assert len(proxy.applied) > before and _ledger_rows(settings.paths.data_dir) == 1
    assert health["recent_decisions"] == 1  # one served router decision, route calls apart
    shares = {e["name"]: e["recent_share"] for e in health["experts"]}
    assert shares[routed["expert"]] == 1.0
    local = next(e for e in health["experts"] if e["kind"] == "local")
    assert local["model"] == local["model_file"] == str(smollm_gguf)  # as configured: a path
    assert "model_file" not in next(e for e in health["experts"] if e["kind"] == "cloud")


def test_route_validates_like_chat(tmp_path: Path, proxy: FaultProxy,
                                   smollm_gguf: Path) -> None:
    settings = _settings(tmp_path, proxy, smollm_gguf)
    with running_daemon(settings) as url, httpx.Client(base_url=url, timeout=60) as c:
        bad = c.post("/v1/route", json={"messages": []})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
        unknown = c.post("/v1/route", json={**_ask("hi"), "model": "nope"})
        assert unknown.status_code == 404 or unknown.status_code == 400
        assert "nope" in unknown.json()["error"]["message"]
        big = c.post("/v1/route", json=_ask("hi", max_tokens=10**6))
        assert big.status_code == 400 and big.json()["error"]["param"] == "max_tokens"
        evil = c.post("/v1/route", json=_ask("hi"), headers={"host": "evil.example"})
        assert evil.status_code == 400 or evil.status_code == 403
        named = c.post("/v1/route", json={**_ask("hi"), "model": "gpt4"}).json()["routing"]
        assert named["expert"] == "gpt4" and named["reason"] == "requested by client"


def test_the_readme_gpt4_example_now_takes_the_cloud_for_a_word_problem(
        tmp_path: Path, proxy: FaultProxy, smollm_gguf: Path) -> None:
    """README's example: GPT-4 at $10 / $30 and the old default usd_per_correct, $0.01.
    Priced at max_tokens every answer cost about $0.008 and GSM8K went local; priced at the
    length GPT-4's profile expects, a word problem where the router gives GPT-4 a far higher
    P(correct) goes to GPT-4, and a request's max_tokens no longer decides it."""
    settings = _settings(tmp_path, proxy, smollm_gguf, usd_per_correct=0.01)
    with running_daemon(settings) as url, httpx.Client(base_url=url, timeout=60) as c:
        picks = {}
        for m in (64, 256, 1024):
            r = c.post("/v1/route", json=_ask(QUERIES[0], max_tokens=m)).json()["routing"]
            picks[m] = r["expert"]
            gpt4 = r["experts"]["gpt4"]
            assert gpt4["expected_output_tokens"] < 0.8 * m or m == 64
        assert r["experts"]["gpt4"]["p_correct"] > r["experts"]["local"]["p_correct"] + 0.3
        assert picks == {64: "gpt4", 256: "gpt4", 1024: "gpt4"}
    # at the default ($0.005: GPT-4's expected $0.004 must buy 0.85 of P(correct)) it stays
    # local, and that too does not depend on max_tokens
    default = _settings(tmp_path / "d", proxy, smollm_gguf)
    with running_daemon(default) as url, httpx.Client(base_url=url, timeout=60) as c:
        local = {m: c.post("/v1/route", json=_ask(QUERIES[0], max_tokens=m)).json()[
            "routing"]["expert"] for m in (256, 512, 1024)}
    # (at max_tokens 64 the answer would be cut, so it costs less and GPT-4 is taken: the
    # policy prices a cut answer, it does not know a cut answer is likely wrong)
    assert local == {256: "local", 512: "local", 1024: "local"}


def test_edgeroute_route_decides_in_process(tmp_path: Path, proxy: FaultProxy,
                                            smollm_gguf: Path, capsys, monkeypatch) -> None:
    from agent.cli import main

    settings = _settings(tmp_path, proxy, smollm_gguf)
    monkeypatch.setenv("EDGEROUTE_PATHS__DATA_DIR", str(settings.paths.data_dir))
    monkeypatch.setenv("EDGEROUTE_PATHS__CACHE_DIR", str(MODEL_CACHE))
    monkeypatch.setenv("EDGEROUTE_LOCAL_EXPERTS", json.dumps(
        [e.model_dump(mode="json") for e in settings.local_experts]))
    monkeypatch.setenv("EDGEROUTE_CLOUD_EXPERTS", json.dumps(
        [{**e.model_dump(mode="json"), "api_key": None} for e in settings.cloud_experts]))
    before = len(proxy.applied)
    assert main(["route", QUERIES[0], "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    with running_daemon(settings) as url:
        daemon = httpx.post(f"{url}/v1/route", json=_ask(QUERIES[0]), timeout=60).json()
    assert out["model"] == daemon["model"]
    assert out["routing"]["scores"] == daemon["routing"]["scores"]
    for name, a in out["routing"]["experts"].items():  # a fresh daemon knows no more
        assert a["expected_cost_usd"] == daemon["routing"]["experts"][name]["expected_cost_usd"]
    assert main(["route", QUERIES[0]]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith(f"expert: {out['model']}") and "gpt4" in table
    assert main(["route", "  "]) == 2  # one line, no traceback
    assert "query text is empty" in capsys.readouterr().err
    assert len(proxy.applied) == before


def test_doctor_warns_when_a_cloud_expert_is_never_chosen(tmp_path: Path, proxy: FaultProxy,
                                                          smollm_gguf: Path,
                                                          monkeypatch) -> None:
    """At a price no gain in P(correct) can pay for, the sample queries never reach the
    cloud expert: doctor says so, with the gain it would need."""
    from agent.doctor_routing import routing_rows

    settings = _settings(tmp_path, proxy, smollm_gguf)
    dear = settings.model_copy(update={"cloud_experts": [settings.cloud_experts[0].model_copy(
        update={"input_usd_per_mtok": 10_000.0, "output_usd_per_mtok": 30_000.0})]})
    rows = {c: (s, d) for c, s, d in routing_rows(dear, {"local": "local", "gpt4": "cloud"})}
    status, detail = rows["routing gpt4"]
    assert status == "warn" and "never chosen" in detail and "+" in detail
    assert rows["routing local"][0] == "ok" and "100% of 48 sample queries" in rows[
        "routing local"][1]
    cheap = dict((c, s) for c, s, _ in routing_rows(settings, {"local": "local",
                                                               "gpt4": "cloud"}))
    assert cheap["routing gpt4"] == "ok"


def test_a_served_reply_carries_its_decisions_id_and_the_record_gets_its_outcome(
        tmp_path: Path, proxy: FaultProxy, smollm_gguf: Path) -> None:
    """One id from the decision to the reply (``chatcmpl-...``) to feedback: the record of
    the decision learns who answered, how long it took and what it cost; no text kept."""
    from agent.runtime import build_runtime

    settings = _settings(tmp_path, proxy, smollm_gguf)
    runtime = build_runtime(settings)
    with running_daemon(settings, runtime) as url, httpx.Client(base_url=url, timeout=60) as c:
        plain = c.post("/v1/chat/completions", json=_ask(QUERIES[0], max_tokens=8)).json()
        with c.stream("POST", "/v1/chat/completions",
                      json=_ask(QUERIES[4], max_tokens=8, stream=True)) as r:
            ids = {json.loads(line[6:])["id"] for line in r.iter_lines()
                   if line.startswith("data: {")}
    recs = {rec.completion_id: rec for rec in runtime.decisions.records()}
    assert plain["id"] in recs and len(ids) == 1 and ids <= set(recs)
    rec = recs[plain["id"]]
    assert rec.answered_by == plain["expert"] and rec.latency_s and rec.latency_s > 0
    assert (rec.cost_usd > 0) == (plain["expert"] == "gpt4")
    assert QUERIES[0] not in json.dumps([r.as_dict() for r in recs.values()])
