"""The daemon's own dashboard in a real headless Chromium: a daemon with a loopback cloud
expert (llama.cpp's server behind a recording proxy) and some traffic; every panel shows
the daemon's real figures; the try box routes without generating and answers on demand;
and a page of another origin, in the same browser, can neither make the daemon call an
expert nor change its state."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent.browser import Recorder, chromium, page_server
from tests.agent.conftest import running_daemon
from tests.cloud_bridge.faultproxy import FaultProxy
from tests.conftest import MODEL_CACHE, REPO, free_port

pytestmark = pytest.mark.slow

WORD = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many "
        "clips in May. How many clips did Natalia sell altogether in April and May?")
QUERIES = [WORD, "Write a python function to find the first repeated character in a string.",
           "Which of these is a noble gas? A) Oxygen B) Argon C) Nitrogen D) Carbon",
           "Say hello."]
SCREENSHOT = REPO / "artifacts" / "dashboard.png"
CHAT_PATHS = ["/v1/chat/completions", "/predict", "/v1/route", "/admin/router/reload",
              "/v1/feedback"]


@dataclass
class Board:
    url: str
    runtime: Any
    settings: Any
    recorder: Recorder
    proxy: FaultProxy

    def metric(self, name: str) -> float:
        """Sum of a metric's samples (every label) in /metrics."""
        text = httpx.get(f"{self.url}/metrics").text
        return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))

    def state(self) -> dict[str, Any]:
        """What a request that got through would change."""
        with sqlite3.connect(self.settings.paths.data_dir / "ledger.sqlite3") as db:
            rows = db.execute("SELECT COUNT(*) FROM spend").fetchone()[0]
        return {"requests": self.metric("edgeroute_requests_total"),
                "decisions": self.metric("edgeroute_decisions_total"),
                "route_calls": self.metric("edgeroute_route_calls_total"),
                "decode_steps": self.metric("edgeroute_local_decode_steps_total"),
                "logged": len(self.runtime.decisions.records()),
                "swaps": self.runtime.router.describe()["swaps"],
                "peer": len(self.proxy.applied), "ledger_rows": rows}


def _ask(text: str, **kw: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": text}], **kw}


@pytest.fixture(scope="module")
def board(cloud_server: str, smollm_gguf: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Board]:
    """A daemon on the embedded router: a local SmolLM2 and a "gpt4" that is llama.cpp's
    server on loopback behind a proxy counting every connection; caps set; traffic sent."""
    from agent.runtime import build_runtime
    from agent.settings import Settings

    tmp = tmp_path_factory.mktemp("dashboard")
    port = int(cloud_server.rsplit(":", 1)[1].split("/")[0])
    settings = Settings(
        paths={"data_dir": tmp / "data", "cache_dir": MODEL_CACHE, "config_dir": tmp / "cfg"},
        server={"port": free_port()},
        local_experts=[{"name": "local", "model": str(smollm_gguf), "n_threads": 2,
                        "profile": "qwen2.5-coder-0.5b"}],
        cloud_experts=[{"name": "gpt4", "base_url": "http://127.0.0.1:1/v1",
                        "model": "smollm2-cloud", "input_usd_per_mtok": 10,
                        "output_usd_per_mtok": 30, "profile": "gpt-4-1106-preview",
                        # a shared 2-core machine: a slow first token is not an outage
                        "first_token_timeout_s": 120, "read_timeout_s": 60}],
        budget={"daily_usd": 1.0, "monthly_usd": 20.0, "expert_daily_usd": {"gpt4": 0.5}},
    )
    with FaultProxy(port) as proxy:
        cloud = settings.cloud_experts[0].model_copy(update={"base_url": proxy.base_url()})
        settings = settings.model_copy(update={"cloud_experts": [cloud]})
        runtime = build_runtime(settings)
        holder: dict[str, Recorder] = {}

        def wrap(app: Any) -> Recorder:
            holder["r"] = Recorder(app)
            return holder["r"]

        with running_daemon(settings, runtime, wrap=wrap) as url:
            with httpx.Client(base_url=url, timeout=120) as c:
                for q in QUERIES:
                    assert c.post("/v1/route", json=_ask(q, max_tokens=16)).status_code == 200
                for q, model in ((WORD, "auto"), (QUERIES[3], "auto"), (QUERIES[2], "local")):
                    r = c.post("/v1/chat/completions", json=_ask(q, max_tokens=8) | {
                        "model": model})
                    assert r.status_code == 200, r.text
            yield Board(url, runtime, settings, holder["r"], proxy)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with chromium(tmp_path_factory.mktemp("chromium")) as ctx:
        yield ctx


def test_the_json_is_the_daemons_figures_and_reading_it_changes_nothing(board: Board) -> None:
    before = httpx.get(f"{board.url}/metrics").text
    r = httpx.get(f"{board.url}/v1/dashboard", params={"decisions": 5, "bucket_s": 10},
                  timeout=60)
    assert r.status_code == 200, r.text
    d = r.json()
    assert httpx.get(f"{board.url}/metrics").text == before  # reading decided nothing
    experts = {e["name"]: e for e in d["experts"]}
    assert list(experts) == ["local", "gpt4"]
    gpt4 = experts["gpt4"]
    assert gpt4["model"] == "smollm2-cloud" and gpt4["output_usd_per_mtok"] == 30
    assert gpt4["profile"] == "gpt-4-1106-preview" and gpt4["profile_source"] == "setting"
    assert set(gpt4["accuracy"]) == {"gsm8k", "mbpp", "pubmedqa", "mmlu"}
    assert gpt4["accuracy"]["gsm8k"] > experts["local"]["accuracy"]["gsm8k"]
    assert gpt4["breaker"] == "closed" and experts["local"]["breaker"] is None
    health = httpx.get(f"{board.url}/health").json()
    assert [e["recent_share"] for e in d["experts"]] == [
        e["recent_share"] for e in health["experts"]]
    usage = board.runtime.ledger.usage()
    spend = d["spend"]
    assert spend["ledger"] == "device" and spend["fleet"] is None
    assert spend["experts"]["gpt4"]["settled_calls"] == usage["experts"]["gpt4"]["settled_calls"]
    assert usage["total"]["day_usd"] > 0  # the word problem went to gpt4
    assert spend["experts"]["gpt4"]["day_usd"] == pytest.approx(usage["total"]["day_usd"])
    caps = {c["label"]: c for c in spend["caps"]}
    assert set(caps) == {"daily", "monthly", "gpt4 daily"}
    assert caps["gpt4 daily"]["left_usd"] == pytest.approx(0.5 - usage["total"]["day_usd"])
    assert gpt4["budget_left_usd"] == pytest.approx(board.runtime.ledger.remaining("gpt4"))
    records = board.runtime.decisions.records()
    assert [x["completion_id"] for x in d["decisions"]] == [
        x.completion_id for x in records[-5:]]
    assert all(x["query"] is None for x in d["decisions"]) and not d["show_prompts"]
    assert WORD[:30] not in r.text  # no prompt text unless the setting is on
    t = d["traffic"]
    assert len(t["buckets"]) == 30 and t["bucket_s"] == 10
    assert sum(sum(b["experts"].values()) for b in t["buckets"]) == sum(
        x.served for x in records)
    assert t["route_calls"] == sum(not x.served for x in records)
    assert sum(t["requests"].values()) == 3
    assert t["router_latency"]["count"] == sum(x.auto for x in records)  # named: not scored
    assert t["decisions"]["requested"] == 1
    assert t["router_latency"]["p50_s"] <= t["router_latency"]["p95_s"]
    assert httpx.get(f"{board.url}/v1/dashboard", params={"decisions": 0}).status_code == 400
    doc = httpx.get(f"{board.url}/openapi.json").json()
    assert "/v1/dashboard" in doc["paths"] and "/" not in doc["paths"]
    assert "DashboardView" in doc["components"]["schemas"]


def test_a_foreign_origin_cannot_reload_the_router(board: Board) -> None:
    """What was measured before the guard: this POST answered 200 and reloaded."""
    before = board.state()
    r = httpx.post(f"{board.url}/admin/router/reload",
                   headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    assert board.state() == before


def _usd(text: str) -> float:
    return float(text.strip().lstrip("$"))


def test_the_page_shows_every_panel_and_the_try_box_works(board: Board, browser: Any) -> None:
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{board.url}/")
    page.wait_for_selector("body[data-loaded]")
    d = httpx.get(f"{board.url}/v1/dashboard", timeout=60).json()

    # experts: names, model, prices, profile and its source, accuracy, breaker
    rows = page.locator("#experts tbody tr")
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.expert)") == ["local", "gpt4"]
    gpt4 = page.locator('#experts tr[data-expert="gpt4"]').inner_text()
    assert "smollm2-cloud" in gpt4 and "10 / 30" in gpt4 and "closed" in gpt4
    assert "gpt-4-1106-preview (setting)" in gpt4
    acc = next(e for e in d["experts"] if e["name"] == "gpt4")["accuracy"]
    assert f"gsm8k {acc['gsm8k']:.3f}" in gpt4
    # spend: today per expert, calls, caps
    usage = board.runtime.ledger.usage()
    cells = page.locator('#spend-experts tr[data-expert="gpt4"] td').all_inner_texts()
    assert cells[0] == "gpt4" and int(cells[3]) == usage["experts"]["gpt4"]["settled_calls"]
    assert _usd(cells[1]) == pytest.approx(usage["experts"]["gpt4"]["day_usd"], rel=0.01)
    assert _usd(cells[1]) > 0
    caps = page.locator("#caps tbody tr td:first-child").all_inner_texts()
    assert caps == ["daily", "monthly", "gpt4 daily"]
    assert "open reservations: 0" in page.inner_text("#spend-totals")
    # traffic: the chart's bars, the counters, the latency table
    assert page.locator("#traffic-chart svg rect").count() >= 1
    answered = page.inner_text('#counters dd[data-counter="answered"]')
    for expert, n in d["traffic"]["requests"].items():
        assert f"{expert} {n}" in answered
    router_row = page.locator("#latency tbody tr").first.locator("td").all_inner_texts()
    assert router_row[0] == "router" and int(router_row[1]) == d["traffic"][
        "router_latency"]["count"]
    # recent decisions: the newest first, no prompt text
    last = board.runtime.decisions.records()[-1]
    top = page.locator("#decisions tbody tr").first
    assert top.get_attribute("data-completion-id") == last.completion_id
    assert last.expert in top.inner_text()
    assert WORD[:30] not in page.content()

    # try a query: scores without generating
    before = board.state()
    page.fill("#try-text", WORD)
    page.click("#try-route")
    page.wait_for_selector('#try-scores tbody tr[data-expert="gpt4"]')
    scored = page.locator("#try-scores tbody tr").evaluate_all(
        "rs => rs.map(r => r.dataset.expert)")
    assert sorted(scored) == ["gpt4", "local"]
    assert page.locator("#try-scores tr.chosen").count() == 1
    assert "→" in page.inner_text("#try-decision")
    after = board.state()
    assert after["route_calls"] == before["route_calls"] + 1
    assert {k: after[k] for k in ("requests", "decode_steps", "peer", "ledger_rows")} == {
        k: before[k] for k in ("requests", "decode_steps", "peer", "ledger_rows")}
    # ... and the answer button answers
    page.fill("#try-text", "Say hello.")
    page.fill("#try-max", "12")
    page.click("#try-answer")
    page.locator("#try-answer-by", has_text="answered by").wait_for(timeout=120_000)
    assert board.state()["requests"] == before["requests"] + 1
    cid = page.inner_text("#try-answer-by").rsplit("· ", 1)[1].strip()
    page.wait_for_selector(f'#decisions tbody tr[data-completion-id="{cid}"]')
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert not errors, errors  # no CSP violation, no script error
    page.close()


ATTACK = """<!doctype html><html><body><h1>a page of another origin</h1><script>
const D = %s;
const CHAT = JSON.stringify({model: "auto", max_tokens: 8,
                             messages: [{role: "user", content: "Say hello."}]});
const PATHS = %s;
function form(path, i) {  // a classic CSRF form: a JSON body smuggled as text/plain
  return new Promise((resolve) => {
    const frame = document.createElement("iframe");
    frame.name = "sink" + i;
    frame.onload = () => resolve();
    document.body.append(frame);
    const f = document.createElement("form");
    f.method = "POST"; f.enctype = "text/plain"; f.target = frame.name; f.action = D + path;
    const input = document.createElement("input");
    input.name = CHAT.slice(0, -1) + ',"pad":"';
    input.value = '"}';
    f.append(input);
    document.body.append(f);
    f.submit();
  });
}
window.attack = async () => {
  const out = [];
  for (const path of PATHS) {
    for (const [mode, type] of [["no-cors", "text/plain"], ["cors", "text/plain"],
                                ["no-cors", "application/x-www-form-urlencoded"],
                                ["cors", "application/json"]]) {
      try {
        const r = await fetch(D + path, {method: "POST", mode, body: CHAT,
                                         headers: {"Content-Type": type}});
        out.push([path, mode, type, r.type, r.status]);
      } catch (e) { out.push([path, mode, type, "blocked", String(e)]); }
    }
    out.push([path, "beacon", navigator.sendBeacon(D + path, CHAT)]);
  }
  let i = 0;
  for (const path of PATHS) await form(path, i++);
  return out;
};
</script></body></html>"""


def test_a_page_of_another_origin_cannot_call_an_expert_or_change_state(
        board: Board, browser: Any) -> None:
    """From http://127.0.0.1:<another port> (another origin, same host): fetch in every
    mode that needs no preflight (and one that does), sendBeacon and a text/plain form
    POST to chat, predict, route, reload and feedback. Each POST reaches the daemon and
    is refused by the Origin guard (the recorder in front of it saw 403s); the decision
    log, the metrics, the ledger, the router and the loopback peer are as before."""
    before = board.state()
    seen = len(board.recorder.seen)
    with page_server(ATTACK % (json.dumps(board.url), json.dumps(CHAT_PATHS)),
                     free_port()) as evil:
        page = browser.new_page()
        page.goto(f"{evil}/")
        results = page.evaluate("attack()")
        # 3 fetches without preflight + a beacon + a form per path; the JSON fetch is
        # stopped at its preflight (CORS is off), so it never POSTs
        want = 5 * len(CHAT_PATHS)
        deadline = time.monotonic() + 20
        while True:
            posts = [e for e in board.recorder.seen[seen:]
                     if e["origin"] == evil and e["method"] == "POST"]
            if len(posts) >= want or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        page.close()
    assert len(posts) == want, (posts, results)
    assert {e["status"] for e in posts} == {403}, posts
    assert {e["path"] for e in posts} == set(CHAT_PATHS)
    assert any(e["type"].startswith("text/plain") for e in posts)
    preflights = [e for e in board.recorder.seen[seen:] if e["method"] == "OPTIONS"]
    assert len(preflights) == len(CHAT_PATHS)
    assert all(r[3] in ("opaque", "blocked") for r in results if len(r) == 5), results
    assert board.state() == before

    # the same browser, from the daemon's own page: the same reload is let through (so
    # the figures above would have shown one)
    page = browser.new_page()
    page.goto(f"{board.url}/")
    status = page.evaluate("fetch('/admin/router/reload', {method: 'POST'}).then(r => r.status)")
    page.close()
    assert status == 200
    assert board.state()["swaps"] == before["swaps"] + 1
    own = board.recorder.seen[-1] if board.recorder.seen[-1]["method"] == "POST" else next(
        e for e in reversed(board.recorder.seen) if e["method"] == "POST")
    assert own["origin"] == board.url and own["status"] == 200


def test_the_page_asks_for_the_token_and_shows_prompts_when_turned_on(
        smollm_gguf: Path, tmp_path: Path, browser: Any) -> None:
    """With server.api_token_file the page itself loads without the token (it holds no
    figures), asks for it, keeps it in local storage and sends it with every call; with
    server.dashboard_prompts on, the recent decisions show the query text. Fixed mode:
    the router predicts no accuracy and says so."""
    from agent.settings import Settings

    token = "dashboard-token-0123456789"
    (tmp_path / "token").write_text(token + "\n")
    settings = Settings(
        paths={"data_dir": tmp_path / "data", "cache_dir": MODEL_CACHE,
               "config_dir": tmp_path / "cfg"},
        server={"port": free_port(), "api_token_file": str(tmp_path / "token"),
                "dashboard_prompts": True},
        local_experts=[{"name": "smol", "model": str(smollm_gguf), "n_threads": 2}],
        router={"bundle": "none"})
    with running_daemon(settings) as url:
        plain = httpx.get(f"{url}/")
        assert plain.status_code == 200 and "frame-ancestors 'none'" in plain.headers[
            "content-security-policy"]
        assert httpx.get(f"{url}/ui/dashboard.js").status_code == 200
        assert httpx.get(f"{url}/v1/dashboard").status_code == 401
        page = browser.new_page()
        page.goto(f"{url}/ui")
        page.wait_for_selector("#token-box:not([hidden])")
        assert page.locator("#experts tbody tr").count() == 0
        page.fill("#token-input", token)
        page.click("#token-save")
        page.wait_for_selector("body[data-loaded]")
        assert page.evaluate("localStorage.getItem('edgeroute.api_token')") == token
        row = page.inner_text('#experts tr[data-expert="smol"]')
        assert "not predicted" in row
        page.fill("#try-text", "What is the capital of France?")
        page.click("#try-route")
        page.wait_for_selector('#try-scores tbody tr[data-expert="smol"]')
        page.wait_for_selector("#decisions td.query >> text=capital of France")
        assert "server.dashboard_prompts is on" in page.inner_text("#prompts-note")
        page.close()
