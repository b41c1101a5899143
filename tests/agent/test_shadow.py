"""Shadow grading on a real daemon: the loopback llama.cpp server (SmolLM2) is both the
reference and the judge, priced like a cloud model; 100 routed requests at once, every one
sampled. Its spend stays within its own cap, goes through the spend ledger too, and the
gradings give outcomes for the expert that answered and for the reference."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx

from tests.agent.conftest import running_daemon
from tests.conftest import MODEL_CACHE, free_port

CAP_USD = 0.05
QUESTIONS = ["What is {n} plus {n}?", "Name a colour that starts with the letter {c}.",
             "Is {n} an even number?", "Spell the word 'cat' backwards, {n} times."]


def _settings(tmp: Path, smollm_gguf: Path, cloud_server: str) -> Any:
    from agent.settings import Settings

    peer = {"base_url": cloud_server, "model": "smollm2-cloud", "input_usd_per_mtok": 10,
            "output_usd_per_mtok": 30, "first_token_timeout_s": 60,
            "deadline_s": 120}
    return Settings(
        paths={"data_dir": tmp / "data", "cache_dir": MODEL_CACHE, "config_dir": tmp / "cfg"},
        server={"port": free_port(), "max_queue_per_expert": 128, "queue_timeout_s": 300},
        local_experts=[{"name": "local", "model": str(smollm_gguf), "n_threads": 2}],
        cloud_experts=[{"name": "ref", **peer}, {"name": "judge", **peer}],
        # A correct answer worth a millionth of a dollar: the user's answers all stay local,
        # the cloud peer only sees the shadow calls.
        policy={"usd_per_correct": 1e-6},
        outcomes={"shadow_share": 1.0, "shadow_reference": "ref", "shadow_judge": "judge",
                  "shadow_daily_usd": CAP_USD, "shadow_max_tokens": 16,
                  "shadow_max_inflight": 2, "shadow_judge_format": "json_object"},
    )


def _counter(metrics: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith(name + "{") and all(w in line for w in want))


async def _burst(url: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as c:
        return await asyncio.gather(*(c.post("/v1/chat/completions", json={
            "model": "auto", "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": QUESTIONS[i % 4].format(
                n=i, c="ABCDEFGHIJ"[i % 10])}]}) for i in range(n)))


def test_shadow_spend_stays_within_its_cap_under_100_concurrent_requests(
        tmp_path: Path, smollm_gguf: Path, cloud_server: str) -> None:
    settings = _settings(tmp_path, smollm_gguf, cloud_server)
    with running_daemon(settings) as url:
        replies = asyncio.run(_burst(url, 100))
        assert [r.status_code for r in replies] == [200] * 100
        assert {r.json()["expert"] for r in replies} == {"local"}
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # the gradings still running after the replies
            health = httpx.get(f"{url}/health", timeout=30).json()
            if health["outcomes"]["shadow"]["inflight"] == 0:
                break
            time.sleep(0.5)
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
    assert health["outcomes"]["shadow"]["inflight"] == 0
    data = settings.paths.data_dir
    with sqlite3.connect(data / "shadow-ledger.sqlite3") as db:
        shadow = db.execute("SELECT state, COALESCE(settled_usd, reserved_usd) FROM spend"
                            ).fetchall()
    with sqlite3.connect(data / "ledger.sqlite3") as db:
        ledger = db.execute("SELECT expert, state, settled_usd FROM spend").fetchall()
    settled = sum(usd for state, usd in shadow if state == "settled")
    assert 0 < settled <= CAP_USD  # it spent, and never past its cap
    assert all(state != "reserved" for state, _ in shadow)  # every row closed
    assert {e for e, _, _ in ledger} <= {"ref", "judge"}  # the same calls, in the ledger
    assert abs(sum(usd or 0 for _, s, usd in ledger if s == "settled") - settled) < 1e-9
    calls = "edgeroute_shadow_calls_total"
    assert _counter(metrics, calls, result="ok") == len([s for s, _ in shadow if s == "settled"])
    assert _counter(metrics, calls, result="over_budget") > 0  # the cap is what stopped it
    assert _counter(metrics, "edgeroute_shadow_skipped_total", reason="over_budget") > 0
    assert abs(_counter(metrics, "edgeroute_shadow_spend_usd_total") - settled) < 1e-9
    with sqlite3.connect(data / "outcomes.sqlite3") as db:
        graded = db.execute("SELECT expert, COUNT(*) FROM outcomes WHERE source='shadow' "
                            "GROUP BY expert").fetchall()
    judged = _counter(metrics, calls, role="judge", result="ok")
    unparsed = _counter(metrics, "edgeroute_shadow_skipped_total", reason="unparsed")
    assert sum(n for _, n in graded) == 2 * (judged - unparsed)  # the answerer and the reference
    if graded:
        assert {e for e, _ in graded} == {"local", "ref"}
