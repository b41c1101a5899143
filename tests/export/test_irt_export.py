"""``edgeroute export`` of an ``irt`` router (export/irt_export.py): a tiny router trained on
the toy table with the real MiniLM cut to one layer, traced, fused, int8-quantized and
bundled; the daemon's own bundle type then scores it as the trained router does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.export.tiny_router import EXPERTS, QUERIES, write_table


@pytest.fixture
def irt_router(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(router folder, table): ``edgeroute train --router irt`` as a stage call."""
    from export.train import TrainConfig, train

    monkeypatch.setenv("EDGEROUTE_EMBED_CACHE", str(tmp_path / "embeddings"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    table = write_table(tmp_path / "table.jsonl")
    out = tmp_path / "router"
    train(TrainConfig(table=table, router="irt", out=out, metric="correct", layers=1,
                      epochs=5, threads=2, progress=False))
    return out, table


def test_an_irt_router_exports_to_a_bundle_the_daemon_scores_alike(
        irt_router: tuple[Path, Path], tmp_path: Path) -> None:
    from agent.router_bundle import BundleManifest
    from export.bundle_writer import ExportConfig
    from export.onnx_export import export_bundle
    from export.routers.kinds import load_router

    router_dir, table = irt_router
    out = tmp_path / "bundle"
    manifest = export_bundle(ExportConfig(router=router_dir, out=out, table=table, threads=1,
                                          min_agreement=0.5, max_quality_loss=1.0))
    assert manifest["kind"] == "irt" and manifest["precision"] == "int8"
    assert manifest["quantization"]["target"] == "portable"  # no --target: any device
    assert manifest["router"]["layers"] == 1
    assert manifest["evaluation"]["source"] == "table-test-split"
    assert sorted(manifest["experts"]) == sorted(EXPERTS)
    BundleManifest.read(out).verify()  # every file's hash as written
    trained, bundled = load_router(router_dir), load_router(out)
    assert type(bundled).__name__ == "IrtBundleRouter"
    queries = [q for q, _ in QUERIES]
    want = trained.score_batch(queries)
    got = bundled.score_batch(queries)[:, [list(bundled.experts).index(e)
                                           for e in trained.experts]]
    assert np.abs(want - got).max() < 0.02  # int8 against the float router


def test_an_irt_export_that_fails_its_gate_writes_nothing(
        irt_router: tuple[Path, Path], tmp_path: Path) -> None:
    from export.bundle_writer import ExportConfig
    from export.errors import ExportError
    from export.onnx_export import export_bundle

    router_dir, table = irt_router
    out = tmp_path / "bundle"
    with pytest.raises(ExportError, match="int8 vs fp32"):
        export_bundle(ExportConfig(router=router_dir, out=out, table=table, threads=1,
                                   min_agreement=1.01))
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".export-")] == []
