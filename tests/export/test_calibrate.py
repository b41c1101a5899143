"""Calibration walks the cost weight to a target cloud share or quality."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main
from export.calibrate import CalibrateConfig, calibrate
from export.errors import PipelineError
from export.table import write_table
from tests.export.test_labels import synthetic_rows


@pytest.fixture(scope="module")
def table_and_router(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("cal")
    rows = synthetic_rows(30, best={"math": "big", "code": "small"}, seed=5)
    for r in rows:
        if r["expert"] == "small":
            r["cost_usd"] = 0.0  # the local expert
    table = tmp / "t.jsonl.gz"
    write_table(table, rows)
    assert main(["train", "--table", str(table), "--router", "mlp", "--metric", "bertsim",
                 "--out", str(tmp / "mlp"), "--seed", "7", "--no-progress", "--threads", "1",
                 "--epochs", "40", "--lr", "0.01"]) == 0
    return table, tmp / "mlp"


def test_target_cloud_share_is_met_with_least_quality_lost(table_and_router) -> None:
    table, router = table_and_router
    free = calibrate(CalibrateConfig(table, router, target_cloud_share=1.0))
    assert free["chosen"]["cost_weight"] == 0.0
    res = calibrate(CalibrateConfig(table, router, target_cloud_share=0.2))
    assert res["chosen"]["cloud_share"] <= 0.2
    shares = [p["cloud_share"] for p in res["curve"]]
    assert shares == sorted(shares, reverse=True)  # monotone in the cost weight
    assert res["chosen"]["cost_usd"] <= free["chosen"]["cost_usd"]
    assert res["cloud_experts"] == ["big", "mid"]
    assert 0.0 <= res["routellm_threshold"]["cloud_share"] <= 0.2 + 1e-9


def test_target_quality_picks_the_cheapest_weight_that_keeps_it(table_and_router) -> None:
    table, router = table_and_router
    best = calibrate(CalibrateConfig(table, router, target_cloud_share=1.0))["chosen"]["quality"]
    res = calibrate(CalibrateConfig(table, router, target_quality=best - 0.05))
    assert res["chosen"]["quality"] >= best - 0.05
    with pytest.raises(PipelineError, match="relax"):
        calibrate(CalibrateConfig(table, router, target_quality=2.0))
