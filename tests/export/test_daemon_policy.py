"""The daemon's policy on a table (export/daemon_policy.py, evaluate's ``daemon`` row) and
the replay that holds a running daemon's ``/v1/route`` to it (export/route_replay.py)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from agent.router_bundle import embedded_bundle
from cloud_bridge.usage import Prices
from export import daemon_policy
from export.errors import PipelineError
from export.labels import build_matrix
from export.table import read_table
from tests.conftest import MODEL_CACHE

TABLE = Path(__file__).resolve().parents[2] / "artifacts" / "expert_table.jsonl.gz"
DEVICE = "qwen2.5-coder-0.5b,smollm2-135m,gpt-4-1106-preview"


def test_prices_are_parsed_as_configured_and_fitted_from_a_tables_rows(tmp_path: Path) -> None:
    assert daemon_policy.parse_prices(["gpt=10,30"]) == {"gpt": Prices(10.0, 30.0)}
    for bad in ("gpt=10", "=1,2", "gpt=a,b", "gpt=-1,2"):
        with pytest.raises(PipelineError, match="--price"):
            daemon_policy.parse_prices([bad])
    m = build_matrix(read_table(TABLE))
    declared = daemon_policy.table_prices(TABLE, m)  # the table header's
    assert declared["gpt-4-1106-preview"] == Prices(10.0, 30.0)
    assert "qwen2.5-coder-0.5b" not in declared  # free: a local expert
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):  # no header: fitted from cost = in * $2/M + out * $5/M
        tin, tout = int(rng.integers(10, 500)), int(rng.integers(1, 400))
        for expert, cost in (("x", (tin * 2 + tout * 5) / 1e6), ("free", 0.0)):
            rows.append({"query_id": f"q{i}", "dataset": "arc", "query": f"question {i}",
                         "expert": expert, "correct": 1.0, "input_tokens": tin,
                         "output_tokens": tout, "cost_usd": cost})
    path = tmp_path / "t.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    prices = daemon_policy.table_prices(path, build_matrix(read_table(path)))
    fitted = prices["x"]
    assert "free" not in prices
    assert fitted.input_usd_per_mtok == pytest.approx(2.0, rel=1e-6)
    assert fitted.output_usd_per_mtok == pytest.approx(5.0, rel=1e-6)


def test_evaluate_prices_each_decision_as_the_readme_says(capsys) -> None:
    """evaluate's daemon row: each query priced at the prompt's typical count plus the
    answer the expert's length model expects, capped by max_tokens, and the choice the
    argmax of the utility with the local margin; a dear cloud expert takes nothing."""
    from agent.cli import main

    args = ["evaluate", "--table", str(TABLE), "--router", str(embedded_bundle()),
            "--experts", DEVICE, "--json"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    d = res["daemon"]["irt"]
    assert d["queries"] == res["test_queries"] and len(d["choices"]) == d["queries"]
    assert sum(d["share"].values()) == pytest.approx(1.0)
    assert 0 < d["share"]["gpt-4-1106-preview"] < 1
    assert res["pricing"]["prices"] == {"gpt-4-1106-preview": [10.0, 30.0]}
    assert main([*args, "--price", "gpt-4-1106-preview=1000,3000"]) == 0
    dear = json.loads(capsys.readouterr().out)["daemon"]["irt"]
    assert dear["share"]["gpt-4-1106-preview"] == 0.0
    assert main([*args, "--usd-per-correct", "none"]) == 0  # cost not weighed
    free = json.loads(capsys.readouterr().out)["daemon"]["irt"]
    assert free["share"]["gpt-4-1106-preview"] > d["share"]["gpt-4-1106-preview"]


@pytest.mark.slow
def test_a_daemons_route_calls_agree_with_evaluate_at_the_same_settings(monkeypatch) -> None:
    """README's GPT-4 example replayed: every test query of the committed table through a
    daemon's own /v1/route (real uvicorn, the embedded local experts, GPT-4 at $10 / $30),
    beside evaluate at the same settings. The shares agree within 5 points and the
    expected cost of the daemon's choices is within 20% of their realised cost (answers
    cut at max_tokens, as the same requests would be)."""
    from export.route_replay import ReplayConfig, replay

    monkeypatch.setenv("EDGEROUTE_PATHS__CACHE_DIR", str(MODEL_CACHE))
    res = replay(ReplayConfig(table=TABLE, router=embedded_bundle(),
                              cloud=("gpt-4-1106-preview=10,30",)))
    d, ev = res["daemon"], res["evaluate"]
    assert d["queries"] == ev["queries"] > 100
    assert abs(res["share_difference"]["gpt-4-1106-preview"]) <= 0.05
    assert res["agreement"] >= 0.95
    assert 0.05 < d["share"]["gpt-4-1106-preview"] < 0.95  # both kinds are chosen
    real = d["realised_capped_cost_usd"]
    assert real > 0 and abs(d["expected_cost_usd_where_realised"] - real) <= 0.2 * real
