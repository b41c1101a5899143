"""``edgeroute export``: a trained BERT-Router folder in, a verified ONNX int8 bundle out.

Steps, each checked before the next:

1. read ``DIR/router.json`` (the contract with ``edgeroute train``) and ``DIR/hf``;
2. export fp32 ONNX with optimum's exporter (``--exporter torch`` or a failing optimum
   falls back to plain ``torch.onnx.export``; the manifest says which ran), and check its
   logits against the torch model;
3. fuse attention, LayerNorm and GELU into onnxruntime's contrib ops (``export.fusion``;
   ``--no-fuse`` skips it);
4. dynamic int8 quantization (``export.quantize``, one config per ``--target``);
5. score the evaluation queries with the plain fp32 graph and the bundle's model through
   the daemon's own scorer (``agent.router_bundle.OnnxScorer``): the router's test split
   of ``--table``, or the ``--queries`` list. Gates: top-1 agreement >=
   ``--min-agreement`` and a relative loss in mean quality of the chosen experts <=
   ``--max-quality-loss``; a failed gate writes nothing and exits non-zero;
6. write the bundle atomically (a staged folder renamed into place): ``model.onnx``,
   ``tokenizer.json``, ``manifest.json`` (experts in label order, metric, temperature,
   max length, sha256 of every file, versions, quantization config, the figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError
from export.fusion import bert_shape, fuse_bert
from export.quantize import TARGETS, QuantConfig, machine_target, quantize_model

log = logging.getLogger("edgeroute.export")

BUNDLE_FORMAT = 1  # agent.router_bundle.BUNDLE_FORMAT reads this
PARITY_QUERIES = 8
PARITY_ATOL = 1e-3  # max |logit| difference, torch vs ONNX fp32
GATE_HINT = "try another --target, --keep-fp32 REGEX, or --precision fp32"
ROUTER_KEYS = ("kind", "experts", "metric", "temperature", "max_length", "seed")


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
    spec = read_router(args.router)
    target = args.target or machine_target()
    quant = None
    if args.precision == "int8":
        quant = dataclasses.replace(TARGETS[target], keep_fp32=tuple(args.keep_fp32))
    eval_set = load_eval_set(args, spec)
    args.out = Path(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=args.out.parent) as tmp:
        work = Path(tmp)
        fp32, exporter = export_fp32(Path(args.router) / "hf", work / "fp32", args)
        parity = torch_parity(Path(args.router) / "hf", fp32, eval_set.queries, spec)
        model = fp32
        fusion = None
        if args.fuse:
            model = work / "model.fused.onnx"
            fusion = fuse_bert(fp32, model, spec["attention_heads"], spec["hidden_size"],
                               spec["layers"])
        if quant is not None:
            quantized = work / "model.int8.onnx"
            quantize_model(model, quantized, quant)
            model = quantized
        tokenizer = Path(args.router) / "hf" / "tokenizer.json"
        figures = evaluate(fp32, model, tokenizer, spec, eval_set, args.threads)
        figures["torch_parity_max_abs_logit_diff"] = parity
        check_gates(figures, args)
        manifest = build_manifest(spec, args, quant, {**exporter, "fusion": fusion}, figures)
        stage = work / "bundle"
        stage.mkdir()
        shutil.copyfile(model, stage / "model.onnx")
        shutil.copyfile(tokenizer, stage / "tokenizer.json")
        write_bundle(stage, manifest, args.out)
    size_mb = (args.out / "model.onnx").stat().st_size / 1e6
    ev = figures
    print(f"bundle {args.out}: {args.precision} ({target if quant else 'no quantization'}), "
          f"model.onnx {size_mb:.1f} MB, exporter {exporter['name']}; top-1 agreement "
          f"{ev['top1_agreement']:.4f} on {ev['queries']} {ev['source']} queries"
          + (f", quality fp32 {ev['quality']['fp32']:.4f} int8 {ev['quality']['int8']:.4f}"
             if ev.get("quality") else ""))
    return 0


def read_router(folder: Path) -> dict[str, Any]:
    """``router.json`` of a BERT router, checked against the train/export contract."""
    folder = Path(folder)
    path = folder / "router.json"
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ExportError(f"{folder} is not a trained router: {path} is missing; run "
                          "`edgeroute train --router bert` first") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: unreadable router.json ({exc})") from exc
    missing = [k for k in ROUTER_KEYS if k not in spec]
    if missing:
        raise ExportError(f"{path}: missing {missing}; retrain the router")
    if spec["kind"] != "bert":
        raise ExportError(f"{path}: kind {spec['kind']!r} cannot be exported to ONNX; only "
                          "'bert' routers can (train with --router bert)")
    if len(spec["experts"]) < 2 or int(spec["max_length"]) < 2:
        raise ExportError(f"{path}: needs >= 2 experts and max_length >= 2")
    for need in ("config.json", "tokenizer.json"):
        if not (folder / "hf" / need).is_file():
            raise ExportError(f"{folder / 'hf' / need} is missing: the router folder is "
                              "incomplete (tokenizer.json needs a fast tokenizer); retrain it")
    heads, hidden, layers = bert_shape(folder / "hf")
    return {**spec, "layers": layers, "hidden_size": hidden, "attention_heads": heads}


class EvalSet:
    """Queries to compare fp32 and int8 on; ``quality`` (queries x experts, higher is
    better, NaN where unknown) when they come from an expert table."""

    def __init__(self, queries: list[str], source: str,
                 quality: np.ndarray | None = None, note: str = "") -> None:
        if not queries:
            raise ExportError(f"no evaluation queries in {source}; the gates need some")
        self.queries = queries
        self.source = source
        self.quality = quality
        self.note = note


def load_eval_set(args: argparse.Namespace, spec: dict[str, Any]) -> EvalSet:
    limit = args.max_eval if args.max_eval and args.max_eval > 0 else None
    if args.table is not None:
        ev = _table_eval_set(Path(args.table), spec)
    elif args.queries is not None:
        ev = EvalSet(_read_queries(Path(args.queries)), "query-list")
    else:
        raise ExportError("give --table (the router's expert table: gates on its test "
                          "split) or --queries (a query list) to check the int8 model")
    if limit is not None and len(ev.queries) > limit:
        q = ev.quality[:limit] if ev.quality is not None else None
        ev = EvalSet(ev.queries[:limit], ev.source, q, ev.note + f" first {limit} only")
    return ev


def _table_eval_set(table: Path, spec: dict[str, Any]) -> EvalSet:
    """The router's own test split: same seed, same split rule as ``edgeroute train``."""
    from export.labels import LabelSpec, build_matrix, metric_values, split_indices, table_sha256
    from export.table import read_table

    m = build_matrix(read_table(table), experts=spec["experts"])
    _, test = split_indices(m, int(spec["seed"]), float(spec.get("test_fraction", 0.2)))
    label = spec.get("label_spec") or {"metric": spec["metric"],
                                       "temperature": spec["temperature"]}
    values = metric_values(m, LabelSpec(**label))[test]
    queries = [m.queries[int(i)] for i in test]
    keep = np.flatnonzero(~np.isnan(values).all(axis=1))
    note = ""
    if spec.get("table_sha256") and table_sha256(table) != spec["table_sha256"]:
        note = "table differs from the router's training table (sha256); split may differ"
        log.warning("%s: %s", table, note)
    return EvalSet([queries[int(i)] for i in keep], "table-test-split", values[keep], note)


def _read_queries(path: Path) -> list[str]:
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError as exc:
        raise ExportError(f"cannot read query list {path} ({exc})") from exc
    if path.suffix != ".jsonl":
        return lines
    out = []
    for n, line in enumerate(lines, 1):
        try:
            out.append(str(json.loads(line)["query"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ExportError(f"{path}:{n}: expected a JSON object with 'query'") from exc
    return out


def export_fp32(hf: Path, out: Path, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """fp32 ONNX of ``hf`` in ``out``; returns the model path and which exporter ran."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out.mkdir(parents=True, exist_ok=True)
    if args.exporter in ("auto", "optimum"):
        try:
            return _export_optimum(hf, out, args.opset), {"name": "optimum", "opset": args.opset}
        except Exception as exc:  # optimum raises many unrelated types; report and fall back
            if args.exporter == "optimum":
                raise ExportError(f"optimum ONNX export of {hf} failed ({exc})") from exc
            log.warning("optimum export failed (%s); using torch.onnx.export", exc)
            note = f"optimum failed: {type(exc).__name__}: {str(exc)[:200]}"
            return _export_torch(hf, out, args.opset), {"name": "torch.onnx.export",
                                                        "opset": args.opset, "note": note}
    return _export_torch(hf, out, args.opset), {"name": "torch.onnx.export", "opset": args.opset}


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


def torch_parity(hf: Path, fp32: Path, queries: list[str], spec: dict[str, Any]) -> float:
    """Max |logit| difference between the torch model and the fp32 ONNX model."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from agent.router_bundle import OnnxScorer

    model = AutoModelForSequenceClassification.from_pretrained(hf, local_files_only=True).eval()
    scorer = OnnxScorer(fp32, hf / "tokenizer.json", int(spec["max_length"]), threads=1)
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


def evaluate(fp32: Path, model: Path, tokenizer: Path, spec: dict[str, Any],
             ev: EvalSet, threads: int) -> dict[str, Any]:
    """fp32 vs the bundle's model on ``ev``, scored exactly as the daemon scores."""
    from agent.router_bundle import OnnxScorer

    max_len = int(spec["max_length"])
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
        "chosen_share_int8": {e: float((c8 == j).mean()) for j, e in enumerate(spec["experts"])},
    }
    if ev.note:
        figures["note"] = ev.note
    quality = _quality(ev.quality, c32, c8, spec) if ev.quality is not None else None
    if quality is not None:
        figures["quality"] = quality
    return figures


def _quality(values: np.ndarray, c32: np.ndarray, c8: np.ndarray,
             spec: dict[str, Any]) -> dict[str, Any] | None:
    """Mean quality of the chosen experts, over queries where every expert has a value
    (elsewhere a missing outcome would silently drop a query from one side only)."""
    rows = np.flatnonzero(~np.isnan(values).any(axis=1))
    if rows.size == 0:
        return None
    v = values[rows]
    q32, q8 = float(v[np.arange(len(v)), c32[rows]].mean()), float(
        v[np.arange(len(v)), c8[rows]].mean())
    loss = (q32 - q8) / abs(q32) if abs(q32) > 1e-12 else q32 - q8
    return {"metric": (spec.get("label_spec") or {}).get("metric", spec["metric"]),
            "orientation": "higher is better (nll negated)", "queries": int(rows.size),
            "fp32": q32, "int8": q8, "relative_loss": float(loss),
            "oracle": float(v.max(axis=1).mean()),
            "per_expert": {e: float(v[:, j].mean()) for j, e in enumerate(spec["experts"])}}


def check_gates(figures: dict[str, Any], args: argparse.Namespace) -> None:
    agree = figures["top1_agreement"]
    gates: dict[str, Any] = {"min_agreement": args.min_agreement,
                             "max_quality_loss": args.max_quality_loss}
    figures["gates"] = gates
    if agree < args.min_agreement:
        raise ExportError(f"int8 vs fp32 top-1 agreement {agree:.4f} < {args.min_agreement} "
                          f"on {figures['queries']} queries; {GATE_HINT}")
    quality = figures.get("quality")
    if quality is not None and quality["relative_loss"] > args.max_quality_loss:
        raise ExportError(f"int8 loses {quality['relative_loss']:.2%} of mean chosen-expert "
                          f"quality (> {args.max_quality_loss:.2%}); {GATE_HINT}")
    gates["passed"] = True


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("onnxruntime", "tokenizers", "transformers", "optimum", "optimum-onnx",
                 "torch", "onnx", "edgeroute"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def build_manifest(spec: dict[str, Any], args: argparse.Namespace, quant: QuantConfig | None,
                   exporter: dict[str, Any], figures: dict[str, Any]) -> dict[str, Any]:
    provenance = {k: spec.get(k) for k in ("seed", "table_sha256", "train_queries", "datasets",
                                           "label_spec", "test_fraction", "layers",
                                           "hidden_size", "attention_heads")}
    return {
        "format": BUNDLE_FORMAT,
        "kind": "bert",
        "experts": list(spec["experts"]),
        "metric": spec["metric"],
        "temperature": float(spec["temperature"]),
        "max_length": int(spec["max_length"]),
        "scores": "softmax(logits), experts in label order",
        "precision": args.precision,
        "quantization": quant.as_dict() if quant is not None else None,
        "exporter": exporter,
        "router": provenance,
        "evaluation": figures,
        "versions": _versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {},
    }


def write_bundle(stage: Path, manifest: dict[str, Any], out: Path) -> None:
    """Hash the staged files into the manifest, then move the folder into place.

    An existing ``out`` is replaced only if it is a bundle (has a manifest.json), so a
    typo cannot wipe an unrelated folder."""
    from agent.router_bundle import MANIFEST_NAME, file_sha256

    for f in sorted(stage.iterdir()):
        manifest["files"][f.name] = {"sha256": file_sha256(f), "bytes": f.stat().st_size}
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (stage / MANIFEST_NAME).write_text(text, encoding="utf-8")
    if out.exists():
        if not (out / MANIFEST_NAME).is_file() and any(out.iterdir()):
            raise ExportError(f"{out} exists and is not a router bundle; choose another --out")
        old = stage.parent / "previous"
        out.rename(old)
        stage.rename(out)
        shutil.rmtree(old)
    else:
        stage.rename(out)
