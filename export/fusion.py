"""Transformer graph fusion of an exported router, with onnxruntime's own optimizer.

optimum's export is a faithful op-by-op graph of the PyTorch model: per layer about thirty
small nodes (MatMul, Add, Reshape, Transpose, Softmax, the LayerNorm and GELU pieces). On
a CPU, for an 18-token query, dispatching those nodes costs as much as the arithmetic.
``onnxruntime.transformers.optimizer`` rewrites them into the fused contrib ops the CPU
execution provider implements (``EmbedLayerNormalization``, ``Attention``,
``SkipLayerNormalization``, ``BiasGelu``) and int8 quantization then covers the fused
``Attention`` too. The fused graph is the same function (export's torch-parity and int8
gates compare it with the unfused fp32 model) and runs on every onnxruntime CPU build,
x86 and arm64 alike: these are contrib ops of the default CPU provider, and ``opt_level=0``
keeps the machine-specific rewrites for the session that loads it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from export.errors import ExportError

log = logging.getLogger("edgeroute.export")

# The fused ops a BERT graph must end up with for the rewrite to have done its job.
REQUIRED_FUSIONS = ("Attention", "SkipLayerNormalization")


def bert_shape(hf: Path) -> tuple[int, int, int]:
    """(attention heads, hidden size, layers) from the router's ``config.json``."""
    try:
        cfg = json.loads((Path(hf) / "config.json").read_text(encoding="utf-8"))
        return (int(cfg["num_attention_heads"]), int(cfg["hidden_size"]),
                int(cfg["num_hidden_layers"]))
    except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise ExportError(f"{hf}/config.json: cannot read the BERT shape ({exc})") from exc


def fuse_bert(src: Path, dst: Path, heads: int, hidden: int, layers: int,
              required: tuple[str, ...] = REQUIRED_FUSIONS) -> dict[str, Any]:
    """Write the fused graph of ``src`` to ``dst``; returns what was fused (for the manifest).
    ``heads``, ``hidden`` and ``layers`` are the model's shape (``bert_shape``).

    Raises ExportError when the optimizer fails or fuses fewer attention blocks than the
    model has layers (an exporter change the fusion patterns no longer match): a silently
    half-fused graph would be slower than the plain one."""
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    try:
        model = optimize_model(str(src), model_type="bert", num_heads=heads,
                               hidden_size=hidden, opt_level=0)
        stats = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
        model.save_model_to_file(str(dst))
    except Exception as exc:  # the optimizer raises assorted untyped errors
        raise ExportError(f"graph fusion of {src} failed ({type(exc).__name__}: {exc}); "
                          "export with --no-fuse") from exc
    short = [op for op in required if stats.get(op, 0) < layers]
    if short:
        raise ExportError(f"graph fusion of {src} fused {stats}, fewer {short} than the "
                          f"{layers} layers; export with --no-fuse")
    log.info("fused graph: %s", stats)
    return {"tool": "onnxruntime.transformers.optimizer", "model_type": "bert",
            "opt_level": 0, "fused_ops": stats}
