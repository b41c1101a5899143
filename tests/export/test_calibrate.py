"""Calibration walks what a correct answer is worth (usd_per_correct) to a target cloud
share or quality, choosing on the validation split and reporting on the test split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from export.calibrate import CalibrateConfig, calibrate
from export.errors import PipelineError
from export.table import write_table
from tests.export.test_labels import synthetic_rows


def table_with_mlp(tmp: Path, rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    """The rows as a table in ``tmp`` and an MLP router trained on it."""
    table = tmp / "t.jsonl.gz"
    write_table(table, rows)
    assert main(["train", "--table", str(table), "--router", "mlp", "--metric", "bertsim",
                 "--out", str(tmp / "mlp"), "--seed", "7", "--no-progress", "--threads", "1",
                 "--epochs", "40", "--lr", "0.01"]) == 0
    return table, tmp / "mlp"


@pytest.fixture(scope="module")
def table_and_router(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    rows = synthetic_rows(30, best={"math": "big", "code": "small"}, seed=5)
    for r in rows:
        if r["expert"] == "small":
            r["cost_usd"] = 0.0  # the local expert
    return table_with_mlp(tmp_path_factory.mktemp("cal"), rows)


def test_target_cloud_share_is_met_with_least_quality_lost(table_and_router) -> None:
    table, router = table_and_router
    free = calibrate(CalibrateConfig(table, router, target_cloud_share=1.0))
    assert free["chosen"]["usd_per_correct"] is None  # any share allowed: cost not weighed
    assert free["chosen_on"] == "validation"
    res = calibrate(CalibrateConfig(table, router, target_cloud_share=0.2))
    assert res["chosen"]["cloud_share"] <= 0.2
    shares = [p["cloud_share"] for p in res["curve_validation"]]
    assert shares == sorted(shares)  # a correct answer worth more: more cloud calls
    assert res["chosen"]["cost_usd"] <= free["chosen"]["cost_usd"]
    assert res["cloud_experts"] == ["big", "mid"]
    rt = res["routellm_threshold"]
    assert 0.0 <= rt["validation"]["cloud_share"] <= 0.2 + 1e-9
    # the test figures are those of the value chosen on validation, never re-chosen
    again = [p for p in res["curve_test"]
             if p["usd_per_correct"] == res["chosen"]["usd_per_correct"]]
    assert again == [res["test"]]
    assert res["validation_queries"] > 0 and res["test_queries"] > 0


def test_validation_and_test_queries_are_disjoint(table_and_router) -> None:
    from export.calibrate import validation_rows
    from export.held_out import held_out
    from export.routers.base import RouterMeta

    table, router = table_and_router
    meta = RouterMeta.read(router)
    m, mt, _, train = held_out(table, meta)
    val = {m.query_ids[i] for i in validation_rows(m, meta, train)}
    assert val and not val & set(mt.query_ids)


def test_target_quality_picks_the_cheapest_value_that_keeps_it(table_and_router) -> None:
    table, router = table_and_router
    best = calibrate(CalibrateConfig(table, router, target_cloud_share=1.0))["chosen"]["quality"]
    res = calibrate(CalibrateConfig(table, router, target_quality=best - 0.05))
    assert res["chosen"]["quality"] >= best - 0.05
    with pytest.raises(PipelineError, match="relax"):
        calibrate(CalibrateConfig(table, router, target_quality=2.0))


@pytest.fixture(scope="module")
def two_local(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two local experts (a recorded confidence, no cost) with clearly different strengths:
    ``small`` best on code, ``mid`` best on math; ``big`` is the cloud."""
    rows = synthetic_rows(40, best={"math": "mid", "code": "small"}, seed=3)
    for r in rows:
        if r["expert"] in ("small", "mid"):
            r["cost_usd"], r["mean_logprob"] = 0.0, -0.5
    return table_with_mlp(tmp_path_factory.mktemp("cal-local"), rows)


def test_local_margin_is_chosen_on_validation_and_replayed_on_test(two_local) -> None:
    import numpy as np

    from export.calibrate import MARGINS
    from export.held_out import held_out
    from export.routers.kinds import load_router

    table, router = two_local
    res = calibrate(CalibrateConfig(table, router, policy="local"))
    assert res["local_experts"] == ["mid", "small"] and res["chosen_on"] == "validation"
    val = [p["quality"] for p in res["curve_validation"]]
    best = max(val)
    # the best on validation, ties going to the larger margin
    assert res["chosen"]["margin"] == max(m for m, v in zip(MARGINS, val, strict=True)
                                          if v >= best - 1e-9)
    # the test figures, replayed here query by query from the router's own scores
    r = load_router(router)
    _, mt, q, _ = held_out(table, r.meta)
    s = r.score_batch(mt.queries)
    d, o = mt.experts.index(res["default_expert"]), mt.experts.index(
        ({"mid", "small"} - {res["default_expert"]}).pop())
    for m, point in zip(MARGINS, res["curve_test"], strict=True):
        got = [q[i, o] if s[i, o] - s[i, d] > m else q[i, d] for i in range(len(q))]
        assert point["quality"] == pytest.approx(float(np.mean(got)))
    assert res["test"]["quality"] == res["curve_test"][MARGINS.index(res["chosen"]["margin"])][
        "quality"]
    # two locals that differ this much are routed between: the chosen margin beats staying
    assert res["test"]["quality"] > res["test"]["always_default"] + 0.1
    assert res["chosen"]["switched_share"] > 0.2


def test_local_margin_needs_two_local_experts(table_and_router, capsys) -> None:
    table, router = table_and_router  # one free expert and no recorded confidence
    with pytest.raises(PipelineError, match="has 0 local expert"):
        calibrate(CalibrateConfig(table, router, policy="local"))
    assert main(["calibrate", "--table", str(table), "--router", str(router),
                 "--policy", "local"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "local expert" in err[0]


def test_local_margin_rejects_an_unknown_default(two_local) -> None:
    table, router = two_local
    with pytest.raises(PipelineError, match="--default-expert 'big' is not a local expert"):
        calibrate(CalibrateConfig(table, router, policy="local", default_expert="big"))
