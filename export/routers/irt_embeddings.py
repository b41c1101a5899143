"""The frozen MiniLM encoder of the ``irt`` router and its disk cache of pooled embeddings.

Why a cache: fine-tuning MiniLM on 2 CPU cores costs hours per run; with the encoder frozen
the embeddings are computed once, cached on disk (``$EDGEROUTE_EMBED_CACHE``, else the user
cache dir), and every training run, sweep and profile fit after that takes seconds. The
encoder keeps only its first ``layers`` layers (the router's latency is the encoder's),
mean-pooled and L2-normalised. :func:`pooler_module` is the one definition the cache
computes with and the ONNX export (``export.irt_export``) traces. torch is imported inside
the functions only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import PipelineError

log = logging.getLogger("edgeroute.irt")

MAX_LAYERS = 6


def embedding_cache_dir() -> Path:
    env = os.environ.get("EDGEROUTE_EMBED_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("edgeroute")) / "embeddings"


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def pooler_module(layers: int) -> Any:
    """MiniLM cut to ``layers`` encoder layers + masked mean pooling + L2 normalisation:
    the one definition the cache computes with and the ONNX export traces."""
    import torch
    from transformers import AutoModel

    from export.routers.encoder import minilm_dir, offline

    if not 1 <= layers <= MAX_LAYERS:
        raise PipelineError(f"--layers {layers}: MiniLM has 1 to {MAX_LAYERS} layers")
    offline()
    bert = AutoModel.from_pretrained(minilm_dir(), add_pooling_layer=False,
                                     attn_implementation="eager")  # fusable attention
    bert.encoder.layer = bert.encoder.layer[:layers]
    bert.config.num_hidden_layers = layers

    class Pooler(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=1)

    return Pooler().eval()


def _cache_path(layers: int, max_length: int) -> Path:
    return embedding_cache_dir() / f"minilm-L{layers}-len{max_length}.npz"


def _read_cache(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    with np.load(path) as z:
        keys = [k.decode("ascii") for k in z["keys"].tolist()]  # stored as S40 bytes
        return dict(zip(keys, z["emb"], strict=True))


def _write_cache(path: Path, cache: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".emb-", suffix=".npz", dir=path.parent)
    os.close(fd)
    keys = np.array(list(cache), dtype="S40")
    emb = np.stack(list(cache.values())).astype(np.float32) if cache else np.zeros((0, 384))
    np.savez(tmp, keys=keys, emb=emb)
    os.replace(tmp, path)


def embed(texts: Sequence[str], layers: int, max_length: int = 128, threads: int = 2,
          batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Pooled embeddings of ``texts`` at ``layers`` depth, from the disk cache where present.
    Missing texts are encoded once for every depth up to ``layers`` (one pass gives all), so
    a depth sweep pays the encoder once. Shape (len(texts), 384), float32."""
    want = [text_key(t) for t in texts]
    caches = {layers: _read_cache(_cache_path(layers, max_length))}
    missing = sorted({k: t for k, t in zip(want, texts, strict=True)
                      if k not in caches[layers]}.items())
    if missing:  # the shallower caches are read only when they are about to grow
        caches |= {depth: _read_cache(_cache_path(depth, max_length))
                   for depth in range(1, layers)}
        _encode_into(caches, [t for _, t in missing], [k for k, _ in missing], layers,
                     max_length, threads, batch_size, progress)
        for depth, cache in caches.items():
            _write_cache(_cache_path(depth, max_length), cache)
    return np.stack([caches[layers][k] for k in want]) if want else np.zeros((0, 384))


def _encode_into(caches: dict[int, dict[str, np.ndarray]], texts: list[str], keys: list[str],
                 layers: int, max_length: int, threads: int, batch_size: int,
                 progress: bool) -> None:
    import torch
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from export.routers.encoder import length_batches, minilm_dir

    torch.set_num_threads(max(1, threads))
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    pooler = pooler_module(layers)
    t0 = time.monotonic()
    batches = length_batches(tok, texts, max_length, batch_size)
    with torch.no_grad():
        for b in tqdm(batches, desc=f"embed L1-{layers}", disable=not progress, unit="batch"):
            enc = tok([texts[i] for i in b], truncation=True, max_length=max_length,
                      padding=True, return_tensors="pt")
            states = pooler.bert(**enc, output_hidden_states=True).hidden_states
            m = enc["attention_mask"].unsqueeze(-1).float()
            for depth in range(1, layers + 1):
                pooled = (states[depth] * m).sum(1) / m.sum(1).clamp(min=1e-9)
                vec = torch.nn.functional.normalize(pooled, dim=1).numpy()
                for row, i in enumerate(b):
                    caches[depth][keys[i]] = vec[row]
    log.info("embedded %d texts at depths 1-%d in %.1f s", len(texts), layers,
             time.monotonic() - t0)
