"""``edgeroute export``: a trained BERT-Router folder in, a verified ONNX int8 bundle out.

Steps, each checked before the next:

1. read ``DIR/router.json`` (``read_meta``, the contract with ``edgeroute train``)
   and ``DIR/hf``;
2. export fp32 ONNX with optimum's exporter (``--exporter torch`` or a failing optimum
   falls back to plain ``torch.onnx.export``; the manifest says which ran), and check its
   logits against the torch model;
3. fuse attention, LayerNorm and GELU into onnxruntime's contrib ops (``export.fusion``;
   ``--no-fuse`` skips it);
4. dynamic int8 quantization (``export.quantize``, one config per ``--target``);
5. score the evaluation queries with the plain fp32 graph and the bundle's model through
   the daemon's own scorer (``agent.router_bundle.OnnxScorer``): the router's test split
   of ``--table`` (``export.held_out.held_out``, as evaluate and calibrate), or the
   ``--queries`` list. Gates: top-1 agreement >=
   ``--min-agreement`` and a relative loss in mean quality of the chosen experts <=
   ``--max-quality-loss``; a failed gate writes nothing and exits non-zero;
6. write the bundle atomically (a staged folder renamed into place): ``model.onnx``,
   ``tokenizer.json``, ``manifest.json`` (``agent.router_bundle.BundleManifest``, the
   type the daemon reads: experts in label order, metric, max length, sha256 of every
   file; provenance: temperature, versions, quantization config, the figures).

The stage is :func:`export_bundle` on an ``ExportConfig``; the config, the evaluation set
and the bundle writer are ``export.bundle_writer``'s, shared with ``export.irt_export``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.bundle_writer import (
    EvalSet,
    ExportConfig,
    load_eval_set,
    versions,
    write_bundle,
)
from export.errors import ExportError
from export.fusion import bert_shape, fuse_bert
from export.quantize import TARGETS, QuantConfig, machine_target, quantize_model
from export.routers.base import RouterMeta
from export.routers.kinds import read_meta

log = logging.getLogger("edgeroute.export")

PARITY_QUERIES = 8
PARITY_ATOL = 1e-3  # max |logit| difference, torch vs ONNX fp32
GATE_HINT = "try another --target, --keep-fp32 REGEX, or --precision fp32"


@dataclass(frozen=True)
class ExportSource:
    """A trained BERT router folder, checked for export: its router.json and model shape."""

    folder: Path
    meta: RouterMeta
    layers: int
    hidden_size: int
    attention_heads: int

    @property
    def hf(self) -> Path:
        return self.folder / "hf"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--router", type=Path, required=True, help="trained router folder "
                        "(router.json + hf/), written by `edgeroute train --router bert`")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--table", type=Path, help="the router's expert table: gates run on "
                     "its test split, with the quality of the chosen experts")
    src.add_argument("--queries", type=Path, help="evaluation queries (one per line, or "
                     "JSONL with a 'query' field) when no table is given: agreement only")
    parser.add_argument("--target", choices=sorted(TARGETS), default=None,
                        help="int8 config: arm64 (Jetson), avx2, avx512, avx512_vnni, "
                        "portable (safe everywhere); default: this machine's")
    parser.add_argument("--keep-fp32", action="append", default=[], metavar="REGEX",
                        help="leave nodes whose name matches in fp32 (repeatable), e.g. "
                        r"'layer\.\d+/output/dense' when int8 fails the gates")
    parser.add_argument("--precision", choices=("int8", "fp32"), default="int8",
                        help="fp32 skips quantization (reference bundles, benchmarks)")
    parser.add_argument("--exporter", choices=("auto", "optimum", "torch"), default="auto",
                        help="auto: optimum, falling back to torch.onnx.export if it fails")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset")
    parser.add_argument("--no-fuse", dest="fuse", action="store_false",
                        help="keep optimum's op-by-op graph (default: fuse attention, "
                        "LayerNorm and GELU with onnxruntime's transformer optimizer)")
    parser.add_argument("--min-agreement", type=float, default=0.99,
                        help="gate: int8 vs fp32 top-1 agreement on the evaluation queries")
    parser.add_argument("--max-quality-loss", type=float, default=0.01,
                        help="gate: relative loss of mean chosen-expert quality, int8 vs fp32")
    parser.add_argument("--max-eval", type=int, default=0,
                        help="evaluate at most this many queries (0: all)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads")


def run(args: argparse.Namespace) -> int:
    from export.cli import stage_config

    cfg = stage_config(ExportConfig, args)
    manifest = export_bundle(cfg)
    ev, exporter = manifest["evaluation"], manifest["exporter"]
    quant = manifest["quantization"]
    size_mb = (cfg.out / "model.onnx").stat().st_size / 1e6
    print(f"bundle {cfg.out}: {cfg.precision} ({quant['target'] if quant else 'no quantization'}"
          f"), model.onnx {size_mb:.1f} MB, exporter {exporter['name']}; top-1 agreement "
          f"{ev['top1_agreement']:.4f} on {ev['queries']} {ev['source']} queries"
          + (f", quality fp32 {ev['quality']['fp32']:.4f} int8 {ev['quality']['int8']:.4f}"
             if ev.get("quality") else ""))
    return 0


def export_bundle(cfg: ExportConfig) -> dict[str, Any]:
    """The stage: write the bundle ``cfg.out`` (or raise, writing nothing); returns its
    manifest as written. An ``irt`` router goes through ``export.irt_export``."""
    meta = read_meta(cfg.router)
    if meta.kind == "irt":
        from export.irt_export import export_irt

        return export_irt(cfg, load_eval_set(cfg, meta))
    src = read_router(cfg.router)
    quant = None
    if cfg.precision == "int8":
        target = cfg.target or machine_target()
        quant = dataclasses.replace(TARGETS[target], keep_fp32=tuple(cfg.keep_fp32))
    eval_set = load_eval_set(cfg, src.meta)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as tmp:
        work = Path(tmp)
        fp32, exporter = export_fp32(src.hf, work / "fp32", cfg)
        parity = torch_parity(src.hf, fp32, eval_set.queries, src.meta)
        model = fp32
        fusion = None
        if cfg.fuse:
            model = work / "model.fused.onnx"
            fusion = fuse_bert(fp32, model, src.attention_heads, src.hidden_size, src.layers)
        if quant is not None:
            quantized = work / "model.int8.onnx"
            quantize_model(model, quantized, quant)
            model = quantized
        tokenizer = src.hf / "tokenizer.json"
        figures = evaluate(fp32, model, tokenizer, src.meta, eval_set, cfg.threads)
        figures["torch_parity_max_abs_logit_diff"] = parity
        check_gates(figures, cfg)
        stage = work / "bundle"
        stage.mkdir()
        shutil.copyfile(model, stage / "model.onnx")
        shutil.copyfile(tokenizer, stage / "tokenizer.json")
        provenance = bundle_provenance(src, cfg, quant, {**exporter, "fusion": fusion}, figures)
        manifest = write_bundle(stage, src.meta, provenance, out)
    return manifest


def read_router(folder: Path) -> ExportSource:
    """A trained router folder that ``edgeroute export`` can bundle: its router.json (the
    one reader, ``read_meta``) of an exportable kind, and the files ``hf/`` needs."""
    from export.routers.kinds import exportable

    folder = Path(folder)
    meta = read_meta(folder)
    path = folder / "router.json"
    if meta.kind not in exportable():
        only = " or ".join(repr(k) for k in exportable())
        raise ExportError(f"{path}: kind {meta.kind!r} cannot be exported to ONNX; only "
                          f"{only} routers can (train with --router {exportable()[0]})")
    if len(meta.experts) < 2 or int(meta.max_length) < 2:
        raise ExportError(f"{path}: needs >= 2 experts and max_length >= 2")
    for need in ("config.json", "tokenizer.json"):
        if not (folder / "hf" / need).is_file():
            raise ExportError(f"{folder / 'hf' / need} is missing: the router folder is "
                              "incomplete (tokenizer.json needs a fast tokenizer); retrain it")
    heads, hidden, layers = bert_shape(folder / "hf")
    return ExportSource(folder, meta, layers, hidden, heads)


def export_fp32(hf: Path, out: Path, cfg: ExportConfig) -> tuple[Path, dict[str, Any]]:
    """fp32 ONNX of ``hf`` in ``out``; returns the model path and which exporter ran."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out.mkdir(parents=True, exist_ok=True)
    opset = cfg.opset
    if cfg.exporter in ("auto", "optimum"):
        try:
            return _export_optimum(hf, out, opset), {"name": "optimum", "opset": opset}
        except Exception as exc:  # optimum raises many unrelated types; report and fall back
            if cfg.exporter == "optimum":
                raise ExportError(f"optimum ONNX export of {hf} failed ({exc})") from exc
            log.warning("optimum export failed (%s); using torch.onnx.export", exc)
            note = f"optimum failed: {type(exc).__name__}: {str(exc)[:200]}"
            return _export_torch(hf, out, opset), {"name": "torch.onnx.export",
                                                   "opset": opset, "note": note}
    return _export_torch(hf, out, opset), {"name": "torch.onnx.export", "opset": opset}


def _export_optimum(hf: Path, out: Path, opset: int) -> Path:
    from optimum.exporters.onnx import main_export

    main_export(str(hf), output=str(out), task="text-classification", opset=opset,
                device="cpu", do_validation=True, local_files_only=True,
                library_name="transformers")
    model = out / "model.onnx"
    if not model.is_file():
        raise ExportError(f"optimum wrote no model.onnx in {out}")
    return model


def _export_torch(hf: Path, out: Path, opset: int) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(hf, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(hf, local_files_only=True)
    enc = dict(tok(["a sample query for tracing", "two"], padding=True, return_tensors="pt"))
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}
    path = out / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (), str(path), kwargs={n: enc[n] for n in names},
                          input_names=names, output_names=["logits"], dynamic_axes=axes,
                          opset_version=opset, dynamo=False)
    return path


def torch_parity(hf: Path, fp32: Path, queries: list[str], meta: RouterMeta) -> float:
    """Max |logit| difference between the torch model and the fp32 ONNX model."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from agent.router_bundle import OnnxScorer

    model = AutoModelForSequenceClassification.from_pretrained(hf, local_files_only=True).eval()
    scorer = OnnxScorer(fp32, hf / "tokenizer.json", int(meta.max_length), threads=1)
    worst = 0.0
    with torch.no_grad():
        for q in queries[:PARITY_QUERIES]:
            feeds = {k: torch.from_numpy(v) for k, v in scorer.feeds(q).items()}
            ref = model(**feeds).logits[0].double().numpy()
            worst = max(worst, float(np.abs(ref - scorer.logits(q)).max()))
    if worst > PARITY_ATOL:
        raise ExportError(f"fp32 ONNX logits differ from torch by {worst:.2e} "
                          f"(> {PARITY_ATOL}); try --exporter torch or another --opset")
    return worst


def evaluate(fp32: Path, model: Path, tokenizer: Path, meta: RouterMeta,
             ev: EvalSet, threads: int) -> dict[str, Any]:
    """fp32 vs the bundle's model on ``ev``, scored exactly as the daemon scores."""
    from agent.router_bundle import OnnxScorer

    max_len = int(meta.max_length)
    ref = OnnxScorer(fp32, tokenizer, max_len, threads)
    new = ref if model == fp32 else OnnxScorer(model, tokenizer, max_len, threads)
    p32 = np.stack([ref.probabilities(q) for q in ev.queries])
    p8 = p32 if new is ref else np.stack([new.probabilities(q) for q in ev.queries])
    c32, c8 = p32.argmax(axis=1), p8.argmax(axis=1)
    figures: dict[str, Any] = {
        "source": ev.source,
        "queries": len(ev.queries),
        "top1_agreement": float((c32 == c8).mean()),
        "max_abs_prob_diff": float(np.abs(p32 - p8).max()),
        "mean_abs_prob_diff": float(np.abs(p32 - p8).mean()),
        "chosen_share_int8": {e: float((c8 == j).mean()) for j, e in enumerate(meta.experts)},
    }
    if ev.note:
        figures["note"] = ev.note
    quality = (_quality(ev.quality, c32, c8, meta.experts, meta.labels().metric)
               if ev.quality is not None else None)
    if quality is not None:
        figures["quality"] = quality
    return figures


def _quality(values: np.ndarray, c32: np.ndarray, c8: np.ndarray, experts: list[str],
             metric: str) -> dict[str, Any] | None:
    """Mean quality of the chosen experts, over queries where every expert has a value
    (elsewhere a missing outcome would silently drop a query from one side only)."""
    rows = np.flatnonzero(~np.isnan(values).any(axis=1))
    if rows.size == 0:
        return None
    v = values[rows]
    q32, q8 = float(v[np.arange(len(v)), c32[rows]].mean()), float(
        v[np.arange(len(v)), c8[rows]].mean())
    loss = (q32 - q8) / abs(q32) if abs(q32) > 1e-12 else q32 - q8
    return {"metric": metric,
            "orientation": "higher is better (nll negated)", "queries": int(rows.size),
            "fp32": q32, "int8": q8, "relative_loss": float(loss),
            "oracle": float(v.max(axis=1).mean()),
            "per_expert": {e: float(v[:, j].mean()) for j, e in enumerate(experts)}}


def check_gates(figures: dict[str, Any], cfg: ExportConfig) -> None:
    agree = figures["top1_agreement"]
    gates: dict[str, Any] = {"min_agreement": cfg.min_agreement,
                             "max_quality_loss": cfg.max_quality_loss}
    figures["gates"] = gates
    if agree < cfg.min_agreement:
        raise ExportError(f"int8 vs fp32 top-1 agreement {agree:.4f} < {cfg.min_agreement} "
                          f"on {figures['queries']} queries; {GATE_HINT}")
    quality = figures.get("quality")
    if quality is not None and quality["relative_loss"] > cfg.max_quality_loss:
        raise ExportError(f"int8 loses {quality['relative_loss']:.2%} of mean chosen-expert "
                          f"quality (> {cfg.max_quality_loss:.2%}); {GATE_HINT}")
    gates["passed"] = True


def bundle_provenance(src: ExportSource, cfg: ExportConfig, quant: QuantConfig | None,
                      exporter: dict[str, Any], figures: dict[str, Any]) -> dict[str, Any]:
    """What the manifest records beside what the daemon checks (see ``BundleManifest``)."""
    meta = src.meta
    router = {"seed": meta.seed, "table_sha256": meta.table_sha256,
              "train_queries": meta.train_queries, "datasets": meta.datasets,
              "label_spec": meta.label_spec or None, "test_fraction": meta.test_fraction,
              "layers": src.layers, "hidden_size": src.hidden_size,
              "attention_heads": src.attention_heads}
    return {
        "kind": meta.kind,
        "temperature": float(meta.temperature),
        "scores": "softmax(logits), experts in label order",
        "precision": cfg.precision,
        "quantization": quant.as_dict() if quant is not None else None,
        "exporter": exporter,
        "router": router,
        "evaluation": figures,
        "versions": versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
