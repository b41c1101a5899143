"""Export of an ``irt`` router: encoder + query tower to ONNX (outputs ``u`` and ``d``),
fused and int8-quantized like the BERT-Router, profiles beside it as data.

Steps, each checked before the next (``edgeroute export`` runs this for ``irt`` folders):

1. trace MiniLM cut to the router's layers, mean pooling and the tower (``torch.onnx``);
   check u, d against the numpy tower on cached-embedding inputs (parity);
2. fuse attention/LayerNorm (``export.fusion``), quantize (``export.quantize``, per target);
3. gates on the evaluation queries, scored through the daemon's own ``IrtBundle`` math:
   the expert with the highest P(correct) agrees between fp32 and int8 on >= min_agreement
   of queries, and the mean |P(int8) - P(fp32)| stays under ``MAX_MEAN_P_DIFF``;
4. the bundle: model.onnx, tokenizer.json, profiles.json, manifest.json (kind ``irt``).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from export.bundle_writer import EvalSet, ExportConfig, versions, write_bundle
from export.errors import ExportError

log = logging.getLogger("edgeroute.export")

MAX_MEAN_P_DIFF = 0.02
PARITY_ATOL = 1e-3
HEADS, HIDDEN = 12, 384  # MiniLM-L6's attention shape


def _module(router: Any) -> Any:
    import torch

    from export.routers.irt_embeddings import pooler_module

    pooler = pooler_module(router.layers)
    t = router.tower

    def lin(w: np.ndarray, b: Any) -> Any:
        layer = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            layer.weight.copy_(torch.tensor(w, dtype=torch.float32))
            layer.bias.copy_(torch.tensor(np.asarray(b).reshape(-1), dtype=torch.float32))
        return layer

    hidden = lin(t.w1, t.b1) if t.w1 is not None else None
    lin_u, lin_d = lin(t.wu, t.bu), lin(t.wd[None, :], [t.bd])

    class Router(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pooler, self.hidden, self.lin_u, self.lin_d = pooler, hidden, lin_u, lin_d

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            h = self.pooler(input_ids, attention_mask, token_type_ids)
            if self.hidden is not None:
                h = torch.relu(self.hidden(h))
            return self.lin_u(h), self.lin_d(h).squeeze(-1)

    return Router().eval()


def trace(router: Any, out: Path, opset: int = 18) -> Path:
    import torch
    from transformers import AutoTokenizer

    from export.routers.encoder import minilm_dir

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    enc = dict(tok(["a sample query for tracing", "two"], padding=True, return_tensors="pt"))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in names}
    axes |= {"u": {0: "batch"}, "d": {0: "batch"}}
    path = out / "model.fp32.onnx"
    with torch.no_grad():
        torch.onnx.export(_module(router), (), str(path), kwargs={n: enc[n] for n in names},
                          input_names=names, output_names=["u", "d"], dynamic_axes=axes,
                          opset_version=opset, dynamo=False)
    return path


def _bundle_p(model: Path, tokenizer: Path, router: Any, queries: list[str],
              threads: int) -> np.ndarray:
    from agent.router_bundle import OnnxScorer
    from export.routers.irt_tower import p_matrix

    scorer = OnnxScorer(model, tokenizer, router.meta.max_length, threads)
    outs = [scorer.session.run(None, scorer.feeds(q)) for q in queries]
    u = np.array([o[0][0] for o in outs], dtype=np.float64)
    d = np.array([float(np.asarray(o[1]).reshape(-1)[0]) for o in outs])
    return p_matrix(u, d, list(router.profiles.profiles.values()))


def _figures(p32: np.ndarray, p8: np.ndarray, outcomes: np.ndarray | None, source: str,
             parity: float) -> dict[str, Any]:
    """fp32 vs int8. A decision is among the experts a query has outcomes for (with a
    table) as in ``evaluate``; the quality is that of the chosen expert's outcome."""
    avail = np.ones_like(p32, bool) if outcomes is None else ~np.isnan(outcomes)
    c32 = np.where(avail, p32, -np.inf).argmax(1)
    c8 = np.where(avail, p8, -np.inf).argmax(1)
    out: dict[str, Any] = {"queries": len(p32), "source": source,
                           "torch_parity_max_abs_p_diff": parity,
                           "top1_agreement": float((c32 == c8).mean()),
                           "mean_abs_p_diff": float(np.abs(p32 - p8).mean()),
                           "max_abs_p_diff": float(np.abs(p32 - p8).max())}
    if outcomes is not None:
        idx = np.arange(len(p32))
        q32, q8 = float(outcomes[idx, c32].mean()), float(outcomes[idx, c8].mean())
        out["quality"] = {"metric": "correct", "fp32": q32, "int8": q8,
                          "relative_loss": (q32 - q8) / abs(q32) if q32 else 0.0}
    return out


def export_irt(cfg: ExportConfig, ev: EvalSet) -> dict[str, Any]:
    """Export ``cfg.router`` (an ``irt`` folder) to a bundle at ``cfg.out``, gated on
    ``ev``; returns the manifest. Raises ExportError when a gate fails (nothing is written).
    ``cfg.target`` None is the portable int8 config (an irt bundle ships to any device)."""
    from export.fusion import fuse_bert
    from export.quantize import TARGETS, quantize_model
    from export.routers.encoder import minilm_dir
    from export.routers.irt import IrtRouter
    from export.routers.kinds import load_router

    router = load_router(cfg.router)
    if not isinstance(router, IrtRouter):
        raise ExportError(f"{cfg.router} is not an irt router")
    queries, threads = ev.queries, cfg.threads
    if not queries:
        raise ExportError("no evaluation queries: the int8 gates need some")
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = minilm_dir() / "tokenizer.json"
    quant = dataclasses.replace(TARGETS[cfg.target or "portable"],
                                keep_fp32=tuple(cfg.keep_fp32)) if cfg.precision == "int8" else None
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as tmp:
        work = Path(tmp)
        fp32 = trace(router, work)
        ref = router.score_batch(queries[:16])
        p32_head = _bundle_p(fp32, tokenizer, router, queries[:16], threads)
        parity = float(np.abs(ref - p32_head).max())
        if parity > PARITY_ATOL:
            raise ExportError(f"fp32 ONNX P(correct) differs from the router by {parity:.2e}")
        model, fusion = fp32, None
        if cfg.fuse:
            model = work / "model.fused.onnx"
            # torch.onnx's graph of the pooled encoder fuses attention but leaves the
            # residual Add beside its LayerNorm; attention is what the check needs.
            fusion = fuse_bert(fp32, model, HEADS, HIDDEN, router.layers, ("Attention",))
        if quant is not None:
            quantize_model(model, work / "model.int8.onnx", quant)
            model = work / "model.int8.onnx"
        p32 = _bundle_p(fp32, tokenizer, router, queries, threads)
        p8 = p32 if model == fp32 else _bundle_p(model, tokenizer, router, queries, threads)
        figures = _figures(p32, p8, ev.quality, ev.source, parity)
        agree, loss = figures["top1_agreement"], figures.get("quality", {}).get(
            "relative_loss", 0.0)
        if agree < cfg.min_agreement or figures["mean_abs_p_diff"] > MAX_MEAN_P_DIFF or \
                loss > cfg.max_quality_loss:
            raise ExportError(f"int8 vs fp32: top-1 agreement {agree:.4f} (gate "
                              f"{cfg.min_agreement}), mean |dP| {figures['mean_abs_p_diff']:.4f} "
                              f"(gate {MAX_MEAN_P_DIFF}), quality loss {loss:.2%} (gate "
                              f"{cfg.max_quality_loss:.0%}); try another --target, --keep-fp32 "
                              "REGEX, or --precision fp32")
        stage = work / "bundle"
        stage.mkdir()
        shutil.copyfile(model, stage / "model.onnx")
        shutil.copyfile(tokenizer, stage / "tokenizer.json")
        router.profiles.write(stage / "profiles.json")
        meta = router.meta
        provenance = {
            "kind": "irt", "dim": router.profiles.dim,
            "encoder_id": router.profiles.encoder_id,
            "encoder": f"all-MiniLM-L6-v2, first {router.layers} layer(s), mean pooled",
            "scores": "P(correct) = sigmoid(u . theta + bias - d), profiles.json",
            "precision": cfg.precision, "quantization": quant.as_dict() if quant else None,
            "exporter": {"name": "torch.onnx.export", "fusion": fusion},
            "router": {"seed": meta.seed, "table_sha256": meta.table_sha256,
                       "train_queries": meta.train_queries, "datasets": meta.datasets,
                       "test_fraction": meta.test_fraction, "layers": router.layers,
                       "irt": meta.extra.get("irt")},
            "evaluation": figures, "versions": versions(),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        meta.experts = list(router.experts)
        meta.metric = "correct"
        manifest = write_bundle(stage, meta, provenance, out)
    log.info("irt bundle %s: %s", out, figures)
    return manifest
