"""The outcomes store on a real daemon (uvicorn on loopback, a real GGUF, the embedded
router bundle): answers are kept as numbers only unless ``outcomes.store_text``, feedback
finds them by the reply's id, an unknown id is a 404 naming ``id``, and the opt-in refit
schedule swaps improved profiles in while the daemon serves."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent.conftest import running_daemon
from tests.conftest import MODEL_CACHE, free_port

MARKER = "PLOVER-ZQXJ-7731"
QUERIES = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?",
    "Write a python function to find the first repeated character in a given string.",
    "Which of these is a noble gas? A) Oxygen B) Argon C) Nitrogen D) Carbon",
    "Does regular aspirin use reduce the risk of colorectal cancer?",
    "Translate 'good morning' into French.",
    "What is the capital of Australia?",
]


def _settings(tmp: Path, gguf: Path, **outcomes: Any) -> Any:
    from agent.settings import Settings

    return Settings(
        paths={"data_dir": tmp / "data", "cache_dir": MODEL_CACHE, "config_dir": tmp / "cfg"},
        server={"port": free_port()},
        local_experts=[{"name": "local", "model": str(gguf), "n_threads": 2}],
        outcomes=outcomes,
    )


def _ask(text: str, **kw: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": text}], **kw}


def _files_hold(folder: Path, needle: str) -> list[str]:
    """Every file under ``folder`` (SQLite WAL and journal files too) that holds ``needle``."""
    raw = needle.encode()
    return [str(p) for p in folder.rglob("*") if p.is_file() and raw in p.read_bytes()]


@pytest.mark.parametrize("store_text", [False, True])
def test_no_prompt_or_answer_text_is_stored_by_default(tmp_path: Path, smollm_gguf: Path,
                                                       store_text: bool) -> None:
    settings = _settings(tmp_path, smollm_gguf, store_text=store_text)
    prompt = f"Repeat this code exactly, nothing else: {MARKER}"
    with running_daemon(settings) as url, httpx.Client(base_url=url, timeout=120) as c:
        plain = c.post("/v1/chat/completions", json=_ask(prompt, max_tokens=24,
                                                        temperature=0)).json()
        with c.stream("POST", "/v1/chat/completions",
                      json=_ask(prompt + " now", max_tokens=24, stream=True)) as r:
            streamed = [json.loads(line[6:]) for line in r.iter_lines()
                        if line.startswith("data: {")]
        routed = c.post("/v1/route", json=_ask(prompt + " again")).json()
        health = c.get("/health").json()
    answer = plain["choices"][0]["message"]["content"]
    assert len(answer) >= 8, answer
    ids = {plain["id"], streamed[0]["id"], routed["id"]}
    with sqlite3.connect(settings.paths.data_dir / "outcomes.sqlite3") as db:
        rows = db.execute("SELECT id, expert, served, length(u), prompt, answer "
                          "FROM answers").fetchall()
    assert {r[0] for r in rows} == ids  # every answer and the route call, by the reply's id
    assert {r[1] for r in rows} == {"local"} and sorted(r[2] for r in rows) == [0, 1, 1]
    assert {r[3] for r in rows} == {32 * 8}  # u(q): 32 float64s
    assert health["outcomes"]["experts"]["local"]["answers"] == 3
    found = _files_hold(settings.paths.data_dir, MARKER) + _files_hold(
        settings.paths.data_dir, answer)
    if store_text:  # the same search finds the text when it is kept: the test can fail
        assert found and all(r[4] is not None for r in rows if r[2])
    else:
        assert found == [] and all(r[4] is None and r[5] is None for r in rows)


def test_feedback_finds_the_answer_by_its_id(tmp_path: Path, smollm_gguf: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    settings = _settings(tmp_path, smollm_gguf)
    with running_daemon(settings) as url, httpx.Client(base_url=url, timeout=120) as c:
        reply = c.post("/v1/chat/completions", json=_ask(QUERIES[5], max_tokens=8)).json()
        first = c.post("/v1/feedback", json={"id": reply["id"], "thumbs": "down"})
        assert first.status_code == 200, first.text
        assert first.json() == {"object": "edgeroute.feedback", "id": reply["id"],
                                "expert": "local", "score": 0.0, "replaced": False}
        again = c.post("/v1/feedback", json={"id": reply["id"], "score": 0.8}).json()
        assert again["replaced"] is True and again["score"] == 0.8
        unknown = c.post("/v1/feedback", json={"id": "chatcmpl-nosuchanswer", "score": 1})
        assert unknown.status_code == 404
        err = unknown.json()["error"]
        assert err["param"] == "id" and err["type"] == "not_found_error"
        assert "chatcmpl-nosuchanswer" in err["message"]
        both = c.post("/v1/feedback", json={"id": reply["id"], "score": 1, "thumbs": "up"})
        assert both.status_code == 400 and both.json()["error"]["param"] == "score"
        out_of_range = c.post("/v1/feedback", json={"id": reply["id"], "score": 1.5})
        assert out_of_range.status_code == 400
        metrics = c.get("/metrics").text
    assert 'edgeroute_feedback_total{replaced="false"} 1.0' in metrics
    assert 'edgeroute_feedback_total{replaced="true"} 1.0' in metrics
    with sqlite3.connect(settings.paths.data_dir / "outcomes.sqlite3") as db:
        assert db.execute("SELECT expert, source, score FROM outcomes WHERE source='feedback'"
                          ).fetchall() == [("local", "feedback", 0.8)]
    # the same from the shell: a score replaces, an unknown id is one line and exit 2
    from agent.cli import main

    monkeypatch.setenv("EDGEROUTE_PATHS__DATA_DIR", str(settings.paths.data_dir))
    monkeypatch.setenv("EDGEROUTE_LOCAL_EXPERTS", json.dumps(
        [e.model_dump(mode="json") for e in settings.local_experts]))
    assert main(["feedback", reply["id"], "up"]) == 0
    assert "replaced the earlier score" in capsys.readouterr().err
    assert main(["feedback", "chatcmpl-nosuchanswer", "0.5"]) == 2
    err_line = capsys.readouterr().err.strip()
    assert len(err_line.splitlines()) == 1 and "chatcmpl-nosuchanswer" in err_line
    assert main(["outcomes", "export", "--json"]) == 0
    exported = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["score"] for o in exported[0]["outcomes"] if o["source"] == "feedback"] == [1.0]
    assert main(["outcomes", "purge"]) == 2  # needs --yes
    assert main(["outcomes", "purge", "--yes"]) == 0
    capsys.readouterr()
    assert main(["outcomes", "export"]) == 0 and capsys.readouterr().out == ""


def test_the_refit_schedule_swaps_learned_profiles_in_while_serving(
        tmp_path: Path, smollm_gguf: Path) -> None:
    """Route calls get ids; feedback says the local expert (no profile of its own: routed with
    the prior, which gives it P(correct) about 0.46) answers every one of them correctly. The
    daemon's own schedule refits, the guard accepts (the held-back feedback is better
    predicted) and the router swaps."""
    settings = _settings(tmp_path, smollm_gguf, refit_every_s=0.5, refit_min_outcomes=20)
    with running_daemon(settings) as url, httpx.Client(base_url=url, timeout=120) as c:
        before = c.post("/v1/route", json=_ask(QUERIES[0])).json()["routing"]["scores"]["local"]
        for i in range(80):
            rid = c.post("/v1/route", json=_ask(f"{QUERIES[i % 6]} (#{i})")).json()["id"]
            assert c.post("/v1/feedback", json={"id": rid, "thumbs": "up"}).status_code == 200
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until a refit has seen every outcome
            health = c.get("/health").json()
            last = health["outcomes"]["last_refit"] or {}
            if last.get("experts", {}).get("local", {}).get("outcomes") == 80:
                break
            time.sleep(0.2)
        # A refit's history row is written before the router swaps the profiles in; the
        # counter counts it after the swap (agent.refit.RefitSchedule), so wait for it.
        while time.monotonic() < deadline and 'edgeroute_refits_total{result="applied"}' \
                not in c.get("/metrics").text:
            time.sleep(0.1)
        health = c.get("/health").json()
        after = c.post("/v1/route", json=_ask(QUERIES[0])).json()["routing"]["scores"]["local"]
        # The schedule keeps running: the swaps are read after the counter, so a refit
        # applied between the two reads shows as a swap too (never the other way round).
        metrics = c.get("/metrics").text
        swaps = c.get("/health").json()["router"]["swaps"]
    assert last["experts"]["local"]["outcomes"] == 80 and last["experts"]["local"]["held"] >= 5
    applied = [line for line in metrics.splitlines()
               if line.startswith('edgeroute_refits_total{result="applied"}')]
    assert applied and 1 <= float(applied[0].split()[-1]) <= swaps
    assert health["router"]["experts"]["local"]["profile_source"] == "device"
    assert after > before + 0.2
    assert 'edgeroute_outcomes_total{source="feedback"} 80.0' in metrics
