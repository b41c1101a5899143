"""``edgeroute export`` on a real BERT-Router trained in the session (tests/export/tiny_router)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.file_digest import sha256_file
from agent.router_bundle import OnnxRouter
from export.bundle_writer import ExportConfig, load_eval_set
from export.errors import ExportError, PipelineError
from export.onnx_export import check_gates, read_router
from export.routers.base import RouterMeta
from tests.export.tiny_router import CODE, EXPERTS, HARD, MAX_LENGTH, export, session_artifacts


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return session_artifacts(tmp_path_factory.getbasetemp() / "tiny-router")


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))


def test_round_trip_bundle_is_complete_and_self_describing(art: dict[str, Path]) -> None:
    man = _manifest(art["int8"])
    assert sorted(p.name for p in art["int8"].iterdir()) == [
        "manifest.json", "model.onnx", "tokenizer.json"]
    assert man["experts"] == EXPERTS  # label order, as trained
    assert (man["metric"], man["max_length"], man["precision"]) == ("correct", MAX_LENGTH, "int8")
    for name, entry in man["files"].items():
        assert sha256_file(art["int8"] / name) == entry["sha256"]
    # portable: full-range u8 weights (no saturating U8S8 path on any x86 CPU)
    assert man["quantization"]["target"] == "portable"
    assert (man["quantization"]["weight_type"], man["quantization"]["reduce_range"]) == (
        "QUInt8", False)
    for dist in ("onnxruntime", "transformers", "optimum", "torch", "edgeroute"):
        assert man["versions"][dist], dist
    ev = man["evaluation"]
    assert ev["source"] == "table-test-split" and ev["queries"] == 15
    assert ev["top1_agreement"] >= 0.99 and ev["gates"]["passed"] is True
    assert set(ev["quality"]) >= {"fp32", "int8", "relative_loss", "oracle"}
    assert man["exporter"]["name"] in ("optimum", "torch.onnx.export")
    # every one of MiniLM's 6 layers fused into one Attention and two SkipLayerNorms
    fused = man["exporter"]["fusion"]["fused_ops"]
    assert fused["Attention"] == 6 and fused["SkipLayerNormalization"] == 12, fused


def test_int8_model_is_much_smaller_than_fp32(art: dict[str, Path]) -> None:
    int8 = (art["int8"] / "model.onnx").stat().st_size
    fp32 = (art["fp32"] / "model.onnx").stat().st_size
    assert int8 < 0.35 * fp32
    assert _manifest(art["fp32"])["quantization"] is None


def test_runtime_scores_match_the_torch_model(art: dict[str, Path]) -> None:
    """fp32 bundle = torch within float noise; int8 with the same top-1 and close scores.

    The int8 bound is loose on purpose: this toy head, trained on a frozen encoder's CLS
    vector, has large weights that amplify int8 rounding (~0.2-0.5 in logits); the real
    check of an int8 router is the export's agreement gate on its test split."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hf = art["router"] / "hf"
    model = AutoModelForSequenceClassification.from_pretrained(hf, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(hf, local_files_only=True)
    fp32 = OnnxRouter.load(art["fp32"], EXPERTS, threads=1)
    int8 = OnnxRouter.load(art["int8"], EXPERTS, threads=1)
    queries = [CODE[0], HARD[3], "Can you help me debug a segfault in my C program?",
               "hello there " * 80]  # the last is truncated to max_length by both sides
    for q in queries:
        with torch.no_grad():
            enc = tok(q, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
            ref = torch.softmax(model(**enc).logits[0], dim=-1).numpy()
        got32 = np.array([fp32.scores(q)[e] for e in EXPERTS])
        got8 = np.array([int8.scores(q)[e] for e in EXPERTS])
        np.testing.assert_allclose(got32, ref, atol=1e-4)
        np.testing.assert_allclose(got8, ref, atol=0.3)
        assert got8.argmax() == ref.argmax(), q


def test_export_refuses_a_router_that_is_not_bert(tmp_path: Path) -> None:
    folder = tmp_path / "mlp"
    RouterMeta(kind="mlp", experts=EXPERTS, metric="correct", temperature=0.1, seed=0,
               table_sha256="", train_queries=2, datasets=["toy"], max_length=64).write(folder)
    res = export(folder, tmp_path / "out", "--queries", str(tmp_path / "q.txt"))
    assert res.returncode == 2
    assert "cannot be exported to ONNX" in res.stderr and "'bert'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_read_router_names_missing_files(art: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="router.json is missing"):
        read_router(tmp_path)
    (tmp_path / "router.json").write_text((art["router"] / "router.json").read_text())
    with pytest.raises(ExportError, match="config.json is missing"):
        read_router(tmp_path)


def _cfg(**kw: Any) -> ExportConfig:
    return ExportConfig(router=Path("unused"), out=Path("unused"), **kw)


def test_gates_fail_on_low_agreement_or_quality_loss() -> None:
    ok = {"top1_agreement": 0.995, "queries": 200,
          "quality": {"relative_loss": 0.004}}
    check_gates(ok, _cfg())
    assert ok["gates"]["passed"] is True
    with pytest.raises(ExportError, match="agreement 0.9800 < 0.99"):
        check_gates({"top1_agreement": 0.98, "queries": 200}, _cfg())
    with pytest.raises(ExportError, match="loses 3.00%"):
        check_gates({"top1_agreement": 1.0, "queries": 200,
                     "quality": {"relative_loss": 0.03}}, _cfg())


def test_eval_set_from_table_is_the_routers_test_split(art: dict[str, Path],
                                                       tmp_path: Path) -> None:
    src = read_router(art["router"])
    assert (src.meta.kind, src.meta.experts, src.layers) == ("bert", EXPERTS, 6)
    ev = load_eval_set(_cfg(table=art["table"]), src.meta)
    assert len(ev.queries) == 15 and ev.quality is not None
    assert ev.quality.shape == (15, len(EXPERTS)) and ev.note == ""
    other = tmp_path / "other.jsonl"
    other.write_text(art["table"].read_text() + "\n", encoding="utf-8")
    assert "differs" in load_eval_set(_cfg(table=other), src.meta).note


def test_eval_set_from_query_list_and_nothing(art: dict[str, Path], tmp_path: Path) -> None:
    meta = read_router(art["router"]).meta
    qfile = tmp_path / "q.jsonl"
    qfile.write_text('{"query": "a"}\n{"query": "b"}\n{"query": "c"}\n', encoding="utf-8")
    ev = load_eval_set(_cfg(queries=qfile, max_eval=2), meta)
    assert ev.queries == ["a", "b"] and ev.quality is None
    with pytest.raises(ExportError, match="give --table"):
        load_eval_set(_cfg(), meta)


def test_quality_compares_only_queries_every_expert_answered() -> None:
    from export.onnx_export import _quality

    nan = float("nan")
    values = np.array([[0.9, 0.1], [0.2, 0.8], [nan, 0.5], [0.4, 0.6]])
    chose32, chose8 = np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])
    q = _quality(values, chose32, chose8, ["a", "b"], "bertsim")
    assert q is not None and q["queries"] == 3  # the row with a missing outcome is left out
    assert q["fp32"] == pytest.approx((0.9 + 0.8 + 0.6) / 3)
    assert q["int8"] == pytest.approx((0.9 + 0.2 + 0.6) / 3)
    assert q["relative_loss"] == pytest.approx((0.8 - 0.2) / 3 / q["fp32"])
    assert q["oracle"] == pytest.approx(q["fp32"])
    assert _quality(np.full((2, 2), nan), chose32[:2], chose8[:2], ["a", "b"],
                    "bertsim") is None
