"""The local-first cascade in a running daemon: a real local model (SmolLM2-135M) answers
first, a real OpenAI-compatible server on loopback stands in for the cloud expert (named
like the shipped GPT-4 profile, so the router rates it above the local model).

The thresholds are set at the two ends on purpose: 0 nats per token (no real answer is
that sure: always escalate) and -50 (every answer stands): what is tested here is the
mechanism; the threshold a device ships is chosen on data (README, Cascade)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.agent.conftest import running_daemon
from tests.conftest import MODEL_CACHE, free_port

QUESTION = "What is the capital of France? Answer in one word."


def _settings(tmp_path: Path, cloud_server: str, threshold: float, **policy):
    from agent.settings import SMOLLM2_DEFAULT, Settings

    return Settings(
        paths={"data_dir": tmp_path / "data", "cache_dir": MODEL_CACHE,
               "config_dir": tmp_path / "cfg"},
        server={"port": free_port()},
        local_experts=[{"name": "smollm2-135m", "model": SMOLLM2_DEFAULT, "n_threads": 2}],
        cloud_experts=[{"name": "gpt4", "base_url": cloud_server,
                        "model": "gpt-4-1106-preview", "input_usd_per_mtok": 10.0,
                        "output_usd_per_mtok": 30.0}],
        policy={"usd_per_correct": None, "cascade": True, "cascade_band": 1.0,
                "cascade_threshold": threshold, **policy},
        budget={"daily_usd": 1.0},
    )


def _ask(client: httpx.Client, **extra) -> httpx.Response:
    return client.post("/v1/chat/completions", json={
        "model": "auto", "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": QUESTION}], **extra})


def _spend(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('edgeroute_spend_usd_total{expert="gpt4"}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.slow
def test_a_confident_local_answer_is_kept_and_costs_nothing(cloud_server, smollm_gguf,
                                                            tmp_path):
    with running_daemon(_settings(tmp_path, cloud_server, -50.0)) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        r = _ask(client)
        assert r.status_code == 200, r.text
        body = r.json()
        cascade = body["routing"]["cascade"]
        assert body["expert"] == "smollm2-135m"
        assert cascade["outcome"] == "kept"
        assert cascade["cloud_expert"] == "gpt4"
        conf = cascade["confidence"]
        assert conf is not None and conf["tokens"] > 0
        assert -50 <= conf["min_logprob"] <= conf["mean_logprob"] <= 0
        assert cascade["local_latency_s"] > 0
        assert _spend(client) == 0.0
        assert 'edgeroute_cascade_total{outcome="kept"} 1.0' in client.get("/metrics").text
        # Per request, the cascade can be switched off: the router's cloud choice answers.
        off = _ask(client, edgeroute={"cascade": False}).json()
        assert off["expert"] == "gpt4" and "cascade" not in off["routing"]
        bad = _ask(client, edgeroute={"cascade": "yes"})
        assert bad.status_code == 400 and "cascade" in bad.json()["error"]["param"]


@pytest.mark.slow
def test_an_unsure_local_answer_is_escalated_and_only_the_cloud_call_is_charged(
        cloud_server, smollm_gguf, tmp_path):
    with running_daemon(_settings(tmp_path, cloud_server, 0.0)) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        body = _ask(client).json()
        cascade = body["routing"]["cascade"]
        assert body["expert"] == "gpt4"
        assert cascade["outcome"] == "escalated"
        assert cascade["local_expert"] == "smollm2-135m"
        assert cascade["confidence"]["mean_logprob"] < 0.0
        assert cascade["local_latency_s"] > 0
        # One cloud call is billed (this peer streams no usage, so the ledger bills the
        # prompt's upper bound), never more than one call's worst case; the local attempt
        # costs nothing.
        from agent.prompt_size import prompt_size

        bound = prompt_size([{"role": "user", "content": QUESTION}]).upper_bound
        spent = _spend(client)
        assert 0 < spent <= (bound * 10 + 8 * 30) / 1e6 + 1e-12
        metrics = client.get("/metrics").text
        assert 'edgeroute_requests_total{expert="gpt4"} 1.0' in metrics
        assert 'edgeroute_requests_total{expert="smollm2-135m"} 1.0' in metrics
        assert 'edgeroute_cascade_total{outcome="escalated"} 1.0' in client.get("/metrics").text
        # A stream is not cascaded unless cascade_stream is on.
        with client.stream("POST", "/v1/chat/completions", json={
                "model": "auto", "max_tokens": 8, "stream": True,
                "messages": [{"role": "user", "content": QUESTION}]}) as s:
            first = next(line for line in s.iter_lines() if line.startswith("data: "))
        assert json.loads(first[6:])["routing"]["cascade"] == {
            "tried": False, "skipped": "stream without cascade_stream"}


@pytest.mark.slow
def test_every_routed_reply_says_whether_the_cascade_tried_local_and_why_not(
        cloud_server, smollm_gguf, tmp_path):
    """Cascade on with a band of 0: the router rates gpt4 above the local model, so the
    query is outside the band; a named expert and JSON mode are never cascaded; a request
    that falls back (gpt4's peer refuses ``developer``, declared as taken) keeps the trace."""
    settings = _settings(tmp_path, cloud_server, -50.0, cascade_band=0.0)
    settings = settings.model_copy(update={"cloud_experts": [
        settings.cloud_experts[0].model_copy(update={"developer_role": True,
                                                     "max_retries": 0})]})
    with running_daemon(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        def skipped(**extra) -> object:
            r = _ask(client, **extra)
            assert r.status_code == 200, r.text
            return r.json()["routing"].get("cascade")

        assert skipped() == {"tried": False, "skipped": "outside the band"}
        assert skipped(model="gpt4") == {"tried": False, "skipped": "named expert"}
        assert skipped(response_format={"type": "json_object"}) == {
            "tried": False, "skipped": "tools/json mode"}
        fell = _ask(client, messages=[{"role": "developer", "content": "Be brief."},
                                      {"role": "user", "content": QUESTION}]).json()
        assert fell["expert"] == "smollm2-135m" and fell["routing"]["fallback_from"] == "gpt4"
        assert fell["routing"]["cascade"] == {"tried": False, "skipped": "outside the band"}
        # Off (per request): no trace at all, as before.
        assert "cascade" not in _ask(client, edgeroute={"cascade": False}).json()["routing"]


@pytest.mark.slow
def test_a_buffered_stream_carries_the_cascade(cloud_server, smollm_gguf, tmp_path):
    settings = _settings(tmp_path, cloud_server, -50.0, cascade_stream=True)
    with running_daemon(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        with client.stream("POST", "/v1/chat/completions", json={
                "model": "auto", "max_tokens": 16, "stream": True, "temperature": 0,
                "messages": [{"role": "user", "content": QUESTION}]}) as s:
            events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        first = json.loads(events[0])
        assert first["routing"]["cascade"]["outcome"] == "kept"
        assert first["routing"]["cascade"]["tried"] is True
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                       for e in events[:-1] if json.loads(e)["choices"])
        assert text.strip()


@pytest.mark.slow
@pytest.mark.anyio
async def test_an_escalation_a_budget_would_refuse_keeps_the_local_answer(
        cloud_server, smollm_gguf, tmp_path):
    """The budget fits when the policy decides; the local attempt runs; meanwhile other
    requests spend the day's budget: the escalation would break the cap, so the local
    answer stands, and the reply says why."""
    from agent.runtime import build_runtime
    from cloud_bridge.wire import SamplingParams

    rt = build_runtime(_settings(tmp_path, cloud_server, 0.0))
    try:
        messages = [{"role": "user", "content": QUESTION}]
        params = SamplingParams(max_tokens=8, temperature=0.0)
        decision = rt.decide("auto", messages, params)
        assert decision.expert == "gpt4"
        first, decision = rt.cascade.first(decision, params, requested=False)
        assert first == "smollm2-135m"
        row = rt.ledger.reserve("gpt4", 0.999)  # spent by others since the decision
        rt.ledger.settle(row, 0.999, 1000, 1000)
        answer, by = await rt.complete(decision, messages, params, cascade_first=first)
        assert by.expert == "smollm2-135m"
        assert by.cascade is not None and by.cascade["outcome"] == "kept_over_budget"
        assert "budget" in str(by.cascade["note"])
        assert answer.content.strip()
        assert rt.ledger.usage()["total"]["day_usd"] == pytest.approx(0.999)
    finally:
        await rt.aclose()
