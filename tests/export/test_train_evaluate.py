"""``edgeroute train`` and ``edgeroute evaluate`` end to end on synthetic tables, through the
real CLI entry point: output shape, Optimal as an upper bound, determinism, clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.cli import main
from export.table import write_table
from tests.export.test_labels import synthetic_rows


def _table(tmp_path: Path, rows: list[dict[str, Any]], name: str = "t.jsonl.gz") -> Path:
    path = tmp_path / name
    write_table(path, rows)
    return path


def _masked_rows() -> list[dict[str, Any]]:
    """Expert 'mid' has no outcome for every third query: masks must hold end to end."""
    rows = synthetic_rows(30, best={"math": "big", "code": "small"}, seed=5)
    return [
        r for r in rows if not (r["expert"] == "mid" and int(r["query_id"].split("-")[1]) % 3 == 0)
    ]


def _train(table: Path, kind: str, out: Path, *extra: str) -> None:
    argv = [
        "train",
        "--table",
        str(table),
        "--router",
        kind,
        "--metric",
        "bertsim",
        "--out",
        str(out),
        "--seed",
        "7",
        "--no-progress",
        "--threads",
        "1",
        *extra,
    ]
    assert main(argv) == 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("routers")
    table = _table(tmp, _masked_rows())
    _train(table, "mlp", tmp / "mlp", "--epochs", "40", "--lr", "0.01")
    _train(table, "knn", tmp / "knn")
    return table, tmp / "mlp", tmp / "knn"


def test_evaluate_json_covers_every_policy_and_optimal_bounds_them(
    trained: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    table, mlp, knn = trained
    argv = [
        "evaluate",
        "--table",
        str(table),
        "--router",
        str(mlp),
        str(knn),
        "--json",
        "--report",
        str(tmp_path / "report"),
    ]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    want = {"mlp", "knn", "zero", "random", "optimal", "expert:big", "expert:mid", "expert:small"}
    assert set(res["overall"]) == want
    assert set(res["per_dataset"]) == {"math", "code"}
    for scope in [res["overall"], *res["per_dataset"].values()]:
        assert set(scope) == want
        best = scope["optimal"]
        for name, r in scope.items():
            assert r["quality"] is not None and r["cost_usd"] is not None, name
            assert r["quality"] <= best["quality"] + 1e-9, name
            assert r["bertsim"] <= best["bertsim"] + 1e-9, name
            assert r["nll"] >= best["nll"] - 1e-9, name
            assert r["cost_usd"] >= best["cost_usd"] - 1e-12, name
            assert r["throughput_tps"] <= best["throughput_tps"] + 1e-9, name
        assert best["apgr"] == pytest.approx(1.0) and scope["zero"]["apgr"] == pytest.approx(0.0)
    overall = res["overall"]
    assert overall["mlp"]["quality"] > max(overall["zero"]["quality"], overall["random"]["quality"])
    assert sum(overall["mlp"]["queries_per_expert"].values()) == res["test_queries"]
    assert len(res["curves"]["mlp"]) > 3 and res["strongest_expert"].startswith("expert:")
    # paired: each expert is compared on the queries it has an outcome for ('mid' lacks some)
    versus = res["acceptance"]["mlp"]["versus_experts"]
    assert versus["expert:big"]["queries"] == res["test_queries"]
    assert 0 < versus["expert:mid"]["queries"] < res["test_queries"]
    assert versus["expert:mid"]["expert_quality"] == overall["expert:mid"]["quality"]
    for v in versus.values():  # the interval brackets the observed paired difference
        lo, hi = v["diff_ci95"]
        assert lo <= v["router_quality"] - v["expert_quality"] + 1e-12 <= hi + 2e-12
    # the table's best expert differs per dataset, so a router that learned it beats them all
    assert res["acceptance"]["mlp"]["beats_every_expert"] is True
    report = tmp_path / "report"
    assert {
        "README.md",
        "results.json",
        "trilemma.png",
        "per_dataset.png",
        "queries_per_expert.png",
        "cost_quality.png",
    } <= {p.name for p in report.iterdir()}
    assert "| mlp |" in (report / "README.md").read_text()
    assert "| mlp | yes |" in (report / "README.md").read_text()


def test_training_is_deterministic(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    table, mlp, _ = trained
    _train(table, "mlp", tmp_path / "again", "--epochs", "40", "--lr", "0.01")
    with np.load(mlp / "mlp.npz") as a, np.load(tmp_path / "again" / "mlp.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)
    meta = json.loads((mlp / "router.json").read_text())
    assert meta["kind"] == "mlp" and meta["experts"] == ["big", "mid", "small"]
    assert meta["seed"] == 7 and len(meta["table_sha256"]) == 64


def test_routers_trained_on_other_settings_are_not_compared(
    trained: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table, mlp, _ = trained
    _train(table, "mlp", tmp_path / "seed8", "--epochs", "2", "--seed", "8")
    argv = ["evaluate", "--table", str(table), "--router", str(mlp), str(tmp_path / "seed8")]
    assert main(argv) == 2
    assert "retrain with the same" in capsys.readouterr().err


def _bad_tables() -> dict[str, tuple[list[dict[str, Any]], str]]:
    no_expert = synthetic_rows(10)
    del no_expert[3]["expert"]
    one_expert = [r for r in synthetic_rows(10) if r["expert"] == "big"]
    no_test = [dict(r, split="train") for r in synthetic_rows(10)]
    no_metric = [dict(r, bertsim=None) for r in synthetic_rows(10)]
    return {
        "missing column": (no_expert, "missing required column"),
        "one expert": (one_expert, "at least two"),
        "empty split": (no_test, "test split is empty"),
        "no metric values": (no_metric, "no values in column 'bertsim'"),
    }


@pytest.mark.parametrize("case", list(_bad_tables()))
def test_bad_tables_give_one_line_errors(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows, message = _bad_tables()[case]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["train", "--table", str(path), "--router", "mlp", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_evaluate_on_a_capped_test_sample(
    trained: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    table, mlp, _ = trained
    argv = [
        "evaluate",
        "--table",
        str(table),
        "--router",
        str(mlp),
        "--json",
        "--max-test-queries",
        "6",
    ]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["test_queries"] == 6
    assert {d: r["zero"]["queries"] for d, r in res["per_dataset"].items()} == {
        "code": 3,
        "math": 3,
    }


def test_paired_interval_is_seeded_and_narrows_with_more_queries() -> None:
    from export.scoring import paired_ci

    rng = np.random.default_rng(1)
    small = rng.choice([-1.0, 0.0, 1.0], size=40, p=[0.2, 0.5, 0.3])
    large = np.tile(small, 25)
    assert paired_ci(small) == paired_ci(small)
    (lo_s, hi_s), (lo_l, hi_l) = paired_ci(small), paired_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3
    assert paired_ci(np.array([1.0])) is None
    assert paired_ci(np.array([np.nan, np.nan, 0.5])) is None
