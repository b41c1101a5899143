"""``edgeroute collect`` end to end: a real local GGUF (SmolLM2), a real OpenAI-compatible
server on loopback as the cloud expert, an unreachable one, and a run killed with SIGKILL."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from export.collect import TableSink, run
from export.errors import PipelineError
from export.table import COLUMNS, read_table
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


def _queries(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"q{i}", "prompt": f"What is {i} plus {i}? Answer briefly.",
                                "reference": f"{i} plus {i} is {2 * i}.", "dataset": "toy"}) + "\n")
    return path


def _args(out: Path, **kw: object) -> argparse.Namespace:
    base: dict[str, object] = dict(
        out=out, datasets="", user_jsonl=[], per_dataset=150, seed=0, joinable=False,
        experts="", max_tokens="8", n_threads=2, no_nll=False, limit=None,
    )
    base.update(kw)
    return argparse.Namespace(**base)


def _local(smollm_gguf: Path) -> dict[str, object]:
    return {"name": "smol", "model": str(smollm_gguf), "n_threads": 2, "n_ctx": 1024}


def test_collect_local_cloud_and_unreachable(
    smollm_gguf: Path, cloud_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cloud = {"name": "cloud", "base_url": cloud_server, "model": "smollm2-cloud",
             "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0,
             # A cold llama.cpp server on a busy 2-core box can take ~20 s for its first call.
             "first_byte_timeout_s": 120.0, "read_timeout_s": 120.0, "deadline_s": 300.0}
    dead = {"name": "dead", "base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "x",
            "connect_timeout_s": 0.5, "deadline_s": 2.0, "max_retries": 0}
    monkeypatch.setenv("EDGEROUTE_LOCAL_EXPERTS", json.dumps([_local(smollm_gguf)]))
    monkeypatch.setenv("EDGEROUTE_CLOUD_EXPERTS", json.dumps([cloud, dead]))
    out = tmp_path / "table.jsonl"
    user = _queries(tmp_path / "q.jsonl", 1)
    args = _args(out, datasets="arc,gsm8k", per_dataset=1, user_jsonl=[user])
    assert run(args) == 1  # the dead expert's calls failed
    rows = read_table(out)
    assert {(r["expert"]) for r in rows} == {"smol", "cloud"}
    assert len(rows) == 3 * 2
    for r in rows:
        assert set(r) == set(COLUMNS)
        assert r["response"] and r["latency_s"] > 0 and r["output_tokens"] > 0
        assert -1.0 <= r["bertsim"] <= 1.0
    smol = [r for r in rows if r["expert"] == "smol"]
    assert all(r["nll"] > 0 and r["cost_usd"] == 0.0 for r in smol)
    assert all(r["correct"] in (0.0, 1.0) for r in rows if r["dataset"] in ("arc", "gsm8k"))
    assert all(r["correct"] is None for r in rows if r["dataset"] == "toy")
    cloud_rows = [r for r in rows if r["expert"] == "cloud"]
    assert all(r["nll"] is None and r["cost_usd"] > 0 for r in cloud_rows)
    log = (tmp_path / "table.jsonl.errors.jsonl").read_text()
    errors = [json.loads(x) for x in log.splitlines()]
    assert errors and {e["expert"] for e in errors} == {"dead"}
    # A rerun only retries the dead expert: the table does not change.
    before = out.read_text()
    again = _args(out, datasets="arc,gsm8k", per_dataset=1, user_jsonl=[user], experts="dead")
    assert run(again) == 1
    assert out.read_text() == before


def test_killed_run_resumes_without_loss(smollm_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "table.jsonl"
    user = _queries(tmp_path / "q.jsonl", 6)
    env = dict(os.environ, EDGEROUTE_LOCAL_EXPERTS=json.dumps([_local(smollm_gguf)]))
    cmd = [sys.executable, "-m", "agent.cli", "collect", "--out", str(out), "--datasets", "",
           "--user-jsonl", str(user), "--max-tokens", "8", "--no-nll"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_text().count("\n") >= 2:  # header + 1 row
                break
            time.sleep(0.05)
        assert proc.poll() is None, "collect finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    committed = [ln for ln in out.read_text().splitlines(keepends=True) if ln.endswith("\n")]
    done_before = len(committed) - 1
    assert 1 <= done_before < 6
    with out.open("a") as f:  # also simulate a row torn by the kill
        f.write('{"query_id": "q5", "dataset": "to')
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    assert text.startswith("".join(committed))  # nothing committed was lost or rewritten
    rows = read_table(out)
    assert sorted(r["query_id"] for r in rows) == sorted(f"q{i}" for i in range(6))


def test_sink_skips_done_pairs(tmp_path: Path) -> None:
    sink = TableSink(tmp_path / "t.jsonl", {"tool": "test"})
    sink.add({"query_id": "a", "dataset": "d", "query": "q", "expert": "e"})
    sink.close()
    again = TableSink(tmp_path / "t.jsonl", {"tool": "test"})
    assert again.done == {("a", "e")}
    with pytest.raises(PipelineError, match="another 'edgeroute collect'"):
        TableSink(tmp_path / "t.jsonl", {"tool": "test"})
    again.close()
    assert (tmp_path / "t.jsonl").read_text().count("_edgeroute_table") == 1
