"""IRT router: a frozen MiniLM encoder, a small query tower, and one ability profile per
expert (``agent.profiles``). P(e correct | q) = sigmoid(u(q) . theta_e + b_e - d(q)).

Why frozen: fine-tuning MiniLM on 2 CPU cores costs hours per run; with the encoder frozen
the embeddings are computed once, cached on disk (``embedding_cache``), and every training
run, sweep and profile fit after that takes seconds. The encoder keeps only its first
``layers`` layers (the router's latency is the encoder's), mean-pooled and L2-normalised.

Training: binary cross-entropy (soft targets where a table gives a soft score) on every
observed (query, expert) cell, so tables with different expert sets pool into one model;
early stopping on a validation split carved from the training queries. The tower is linear
(``hidden=0``) or one ReLU layer.

Folder: ``router.json`` (kind ``irt``; ``experts`` = the profiled experts),
``tower.npz`` (tower weights, numpy), ``profiles.json`` (``agent.profiles.ProfileSet``).
``score_batch`` returns P(correct) per expert: not a distribution, each in [0, 1].
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.profiles import Profile, ProfileSet
from export.errors import PipelineError
from export.routers.base import RouterMeta, TrainedRouter

if TYPE_CHECKING:
    from export.routers.training import TrainingSet

log = logging.getLogger("edgeroute.irt")

MAX_LAYERS = 6
LOCAL_MODELS = (  # profiles of models a device runs itself (priors for local experts)
    "qwen2.5-coder-0.5b", "smollm2-135m", "mistral-7b", "metamath", "zephyr", "dolphin",
    "llama-3-8b", "chinese-mistral", "meta-llama-3", "mistralai/mistral-7b-instruct",
)


@dataclass(frozen=True)
class IrtConfig:
    """Shape and training of the query tower. Chosen on validation (README)."""

    layers: int = 1
    dim: int = 32
    hidden: int = 256  # 0: linear tower
    max_length: int = 128
    epochs: int = 300
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    dropout: float = 0.1
    patience: int = 15
    seed: int = 0
    threads: int = 2


def expert_kind(name: str) -> str:
    low = name.lower()
    return "local" if any(m in low for m in LOCAL_MODELS) else "cloud"


# -- frozen encoder and its cache ----------------------------------------------------------
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


# -- the query tower in numpy (scoring and profile fits need no torch) --------------------
@dataclass(frozen=True)
class Tower:
    """u(x) and d(x) of pooled embeddings x; ``w1`` is None for a linear tower."""

    wu: np.ndarray
    bu: np.ndarray
    wd: np.ndarray
    bd: float
    w1: np.ndarray | None = None
    b1: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = x if self.w1 is None else np.maximum(x @ self.w1.T + self.b1, 0.0)
        return h @ self.wu.T + self.bu, h @ self.wd + self.bd

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"wu": self.wu, "bu": self.bu, "wd": self.wd, "bd": np.array(self.bd)}
        if self.w1 is not None and self.b1 is not None:
            out |= {"w1": self.w1, "b1": self.b1}
        return out

    @classmethod
    def from_arrays(cls, z: Any) -> Tower:
        return cls(z["wu"], z["bu"], z["wd"], float(z["bd"]),
                   z.get("w1"), z.get("b1"))

    def encoder_id(self, layers: int, max_length: int) -> str:
        h = hashlib.sha256(f"minilm-L{layers}-len{max_length}".encode())
        for k, v in sorted(self.arrays().items()):
            h.update(k.encode())
            h.update(np.ascontiguousarray(v, dtype=np.float32).tobytes())
        return h.hexdigest()


def p_matrix(u: np.ndarray, d: np.ndarray, profiles: Sequence[Profile]) -> np.ndarray:
    theta = np.array([p.theta for p in profiles], dtype=np.float64)
    bias = np.array([p.bias for p in profiles], dtype=np.float64)
    z = u @ theta.T + bias[None, :] - d[:, None]
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


class IrtRouter(TrainedRouter):
    def __init__(self, meta: RouterMeta, tower: Tower, profiles: ProfileSet) -> None:
        super().__init__(meta)
        self.tower = tower
        self.profiles = profiles
        self.layers = int(meta.extra["layers"])

    @property
    def experts(self) -> tuple[str, ...]:
        return tuple(self.profiles.profiles)

    def features(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(u, d) of each text: what a profile fit needs."""
        return self.tower(embed(texts, self.layers, self.meta.max_length, progress=False))

    def score_batch(self, texts: list[str]) -> np.ndarray:
        u, d = self.features(texts)
        return p_matrix(u, d, list(self.profiles.profiles.values()))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.meta.experts = list(self.experts)
        self.meta.write(folder)
        np.savez(folder / "tower.npz", **self.tower.arrays())
        self.profiles.write(folder / "profiles.json")

    @classmethod
    def load(cls, folder: Path, meta: RouterMeta) -> IrtRouter:
        with np.load(Path(folder) / "tower.npz") as z:
            tower = Tower.from_arrays(z)
        return cls(meta, tower, ProfileSet.read(Path(folder) / "profiles.json"))


# -- training -------------------------------------------------------------------------------
def fit_tower(x: np.ndarray, y: np.ndarray, tr: np.ndarray, va: np.ndarray,
              cfg: IrtConfig) -> tuple[Tower, np.ndarray, np.ndarray, dict[str, Any]]:
    """Train tower + profiles by masked BCE on ``y`` (queries x experts, NaN = unobserved).
    Returns the tower, theta (E, K), bias (E,) and the training log."""
    import torch

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, cfg.threads))
    n_exp = y.shape[1]
    width = cfg.hidden or x.shape[1]
    hidden = torch.nn.Linear(x.shape[1], cfg.hidden) if cfg.hidden else None
    lin_u, lin_d = torch.nn.Linear(width, cfg.dim), torch.nn.Linear(width, 1)
    theta = torch.nn.Parameter(0.1 * torch.randn(n_exp, cfg.dim))
    bias = torch.nn.Parameter(torch.zeros(n_exp))
    drop = torch.nn.Dropout(cfg.dropout)
    modules = [m for m in (hidden, lin_u, lin_d) if m is not None]
    params = [p for m in modules for p in m.parameters()] + [theta, bias]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    X = torch.tensor(x, dtype=torch.float32)
    Y = torch.tensor(np.nan_to_num(y, nan=0.0), dtype=torch.float32)
    M = torch.tensor(~np.isnan(y), dtype=torch.float32)

    def logits(idx: Any, train: bool) -> Any:
        h = X[idx]
        if hidden is not None:
            h = torch.relu(hidden(drop(h) if train else h))
        h = drop(h) if train else h
        return lin_u(h) @ theta.T + bias - lin_d(h)

    def loss_of(idx: Any, train: bool) -> Any:
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            logits(idx, train), Y[idx], reduction="none")
        return (bce * M[idx]).sum() / M[idx].sum().clamp(min=1)

    rng = np.random.default_rng(cfg.seed)
    best, best_state, stale, history = float("inf"), None, 0, []
    va_t = torch.tensor(va)
    for _epoch in range(cfg.epochs):
        for m in modules:
            m.train()
        order = rng.permutation(tr)
        for i in range(0, len(order), cfg.batch_size):
            opt.zero_grad()
            loss_of(torch.tensor(order[i:i + cfg.batch_size]), True).backward()
            opt.step()
        with torch.no_grad():
            val = float(loss_of(va_t, False)) if len(va) else 0.0
        history.append(round(val, 5))
        if val < best - 1e-5:
            best, stale = val, 0
            best_state = [p.detach().clone() for p in params]
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        with torch.no_grad():
            for p, s in zip(params, best_state, strict=True):
                p.copy_(s)
    det = lambda t: t.detach().numpy().astype(np.float64)  # noqa: E731
    tower = Tower(det(lin_u.weight), det(lin_u.bias), det(lin_d.weight)[0],
                  float(lin_d.bias.item()),
                  det(hidden.weight) if hidden is not None else None,
                  det(hidden.bias) if hidden is not None else None)
    return tower, det(theta), det(bias), {"val_bce": history, "best_val_bce": best,
                                          "epochs": len(history)}


def train_irt(meta: RouterMeta, queries: list[str], y: np.ndarray, tr: np.ndarray,
              va: np.ndarray, cfg: IrtConfig, fitted_on: str,
              progress: bool = True) -> tuple[IrtRouter, dict[str, Any]]:
    """Embed (cached), fit the tower and profiles, and build the router."""
    x = embed(queries, cfg.layers, cfg.max_length, cfg.threads, progress=progress)
    t0 = time.monotonic()
    tower, theta, bias, log_ = fit_tower(x, y, tr, va, cfg)
    u, d = tower(x[tr])
    obs = (~np.isnan(y[tr])).sum(axis=0)
    profiles = []
    for j, name in enumerate(meta.experts):
        p = Profile(name, tuple(float(t) for t in theta[j]), float(bias[j]),
                    kind=expert_kind(name), fitted_on=fitted_on, observations=int(obs[j]))
        mean_p = float(p_matrix(u, d, [p]).mean()) if len(tr) else None
        profiles.append(Profile(**{**asdict(p), "mean_p": mean_p}))
    eid = tower.encoder_id(cfg.layers, cfg.max_length)
    pset = ProfileSet(eid, cfg.dim, {p.name: p for p in profiles})
    meta.extra = {**meta.extra, "layers": cfg.layers, "encoder_id": eid,
                  "irt": {k: v for k, v in asdict(cfg).items() if k != "threads"},
                  "head_fit_s": round(time.monotonic() - t0, 2)}
    return IrtRouter(meta, tower, pset), log_


def fit(data: TrainingSet) -> tuple[IrtRouter, dict[str, Any]]:
    """The kind registry's entry point (``edgeroute train --router irt --metric correct``)."""
    meta = data.meta
    if meta.metric != "correct":
        raise PipelineError(f"--router irt learns P(correct), not {meta.metric!r}: train it "
                            "with --metric correct")
    cfg = IrtConfig(layers=data.fit.layers or IrtConfig.layers, max_length=meta.max_length,
                    epochs=data.fit.epochs,
                    batch_size=data.fit.batch_size, lr=data.fit.lr,
                    patience=data.fit.patience, seed=data.fit.seed, threads=data.fit.threads)
    used = np.union1d(data.train_idx, data.val_idx)
    pos = {int(q): k for k, q in enumerate(used)}
    m = data.matrix
    split = "all rows" if data.all_rows else "train split"
    fitted_on = f"{data.table.name} {split} ({len(data.train_idx)} queries)"
    return train_irt(meta, [m.queries[i] for i in used], m.values["correct"][used],
                     np.array([pos[int(i)] for i in data.train_idx], dtype=int),
                     np.array([pos[int(i)] for i in data.val_idx], dtype=int), cfg,
                     fitted_on, data.fit.progress)


def train_on_matrix(m: Any, meta: RouterMeta, cfg: IrtConfig, train_idx: np.ndarray,
                    val_fraction: float, fitted_on: str,
                    progress: bool = True) -> tuple[IrtRouter, dict[str, Any]]:
    """Fit on ``train_idx`` of an OutcomeMatrix (metric ``correct``), validation carved out
    of it as ``edgeroute train`` carves it. Only these queries are embedded."""
    from export.routers.training import validation_split

    inner, val = validation_split(len(train_idx), val_fraction, cfg.seed)
    used = np.sort(train_idx)
    pos = {int(q): k for k, q in enumerate(used)}
    tr = np.array([pos[int(train_idx[i])] for i in inner], dtype=int)
    va = np.array([pos[int(train_idx[i])] for i in val], dtype=int)
    return train_irt(meta, [m.queries[i] for i in used], m.values["correct"][used], tr, va,
                     cfg, fitted_on, progress)


class IrtBundleRouter(IrtRouter):
    """An exported ``irt`` bundle (the embedded one too) scored like a trained router, so
    ``evaluate`` and ``profile fit`` take a bundle wherever they take a router folder.
    Scores come from the bundle's own ONNX graph, exactly as the daemon computes them."""

    def __init__(self, meta: RouterMeta, bundle: Any) -> None:
        TrainedRouter.__init__(self, meta)
        self.bundle = bundle
        self.profiles = bundle.shipped
        self.layers = int(meta.extra.get("layers", 0))

    def features(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.bundle.features_batch(texts)  # type: ignore[no-any-return]

    def save(self, folder: Path) -> None:
        raise PipelineError("a bundle is written by `edgeroute export` or `profile fit`")

    @classmethod
    def open(cls, folder: Path, threads: int = 2) -> IrtBundleRouter:
        from agent.profile_router import IrtBundle

        b = IrtBundle.load(Path(folder), threads)
        r = b.manifest.raw.get("router") or {}
        meta = RouterMeta(
            kind="irt", experts=list(b.shipped.profiles), metric="correct", temperature=0.1,
            seed=int(r.get("seed", 0)), table_sha256=str(r.get("table_sha256", "")),
            train_queries=int(r.get("train_queries", 0)), datasets=list(r.get("datasets", [])),
            max_length=b.manifest.max_length,
            label_spec={"metric": "correct", "temperature": 0.1},
            test_fraction=float(r.get("test_fraction", 0.2)),
            extra={"layers": r.get("layers"), "bundle": str(folder)})
        return cls(meta, b)
