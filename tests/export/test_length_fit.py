"""``edgeroute profile lengths`` (export/length_fit.py): answer-length models fitted on the
committed table's train split, chosen on validation, reported on test, written into a
bundle the daemon verifies; and the ridge fit against numpy's least squares."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.cli import main
from agent.router_bundle import BundleManifest, embedded_bundle
from export.length_fit import fit

TABLE = Path(__file__).resolve().parents[2] / "artifacts" / "expert_table.jsonl.gz"


def test_the_ridge_fit_is_least_squares_when_unpenalised() -> None:
    rng = np.random.default_rng(0)
    u = rng.normal(size=(200, 3))
    y = u @ np.array([0.5, -1.0, 2.0]) + 3.0 + rng.normal(0, 0.1, 200)
    model = fit(u, y, "query", lam=1e-9)
    a = np.column_stack([u, np.ones(200)])
    ref, *_ = np.linalg.lstsq(a, y, rcond=None)
    assert np.allclose(model.theta, ref[:3], atol=1e-6) and model.bias == pytest.approx(ref[3])
    assert model.sigma == pytest.approx(0.1, rel=0.2)
    mean = fit(u, y, "mean")
    assert mean.theta == () and mean.bias == pytest.approx(y.mean())


def test_lengths_fitted_on_the_train_split_and_written_into_a_bundle(tmp_path: Path,
                                                                      capsys) -> None:
    out, report = tmp_path / "bundle", tmp_path / "lengths.json"
    assert main(["profile", "lengths", "--router", str(embedded_bundle()), "--table",
                 str(TABLE), "--out", str(out), "--report", str(report)]) == 0
    capsys.readouterr()
    BundleManifest.read(out).verify()  # profiles.json rehashed: the daemon would load it
    res = json.loads(report.read_text())
    assert res["fitted_on"] == "train split"
    # GPT-4 answers ARC in a token and MBPP in hundreds: the per-query form is chosen
    assert res["chosen"]["form"] == "query"
    val = {(t["form"], t["lambda"]): t for t in res["validation"]}
    best = max(val.values(), key=lambda t: t["loglik"])
    assert (best["form"], best["lambda"] or 0.0) == (res["chosen"]["form"],
                                                     res["chosen"]["lambda"])
    test = res["test"]
    assert test["query"]["mae_log"] < test["mean"]["mae_log"]
    assert 0.7 < test["query"]["expected_over_real"] < 1.3  # within 30% on test
    prof = {p["name"]: p for p in json.loads((out / "profiles.json").read_text())["profiles"]}
    gpt4 = prof["gpt-4-1106-preview"]["length"]
    assert len(gpt4["theta"]) == 32 and gpt4["observations"] > 0
