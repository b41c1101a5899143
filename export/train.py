"""``edgeroute train``: expert table -> soft labels -> a trained router folder.

    edgeroute train --table T --router {mlp,bert,knn} --metric M --out DIR
                    [--temperature 0.1] [--seed 0] [--epochs N]

The split (per-dataset seeded 20% test, or the table's ``split`` column) is recomputed
by ``edgeroute evaluate`` from the seed and fraction stored in router.json, so the test
queries are never trained on. ``train_log.json`` records the loss history and wall time.

The stage is :func:`train` on a :class:`TrainConfig` (tests and notebooks build one
directly); how each router kind trains is the kind registry's (``export.routers.kinds``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import PipelineError, TableError
from export.labels import (
    METRICS,
    LabelSpec,
    build_matrix,
    labelled_rows,
    metric_values,
    soft_labels,
    split_indices,
    subsample_per_dataset,
    table_sha256,
)
from export.routers.base import RouterMeta, TrainedRouter
from export.routers.kinds import KINDS, router_kind
from export.routers.training import FitConfig, TrainingSet, validation_split


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``epochs``/``batch_size``/``lr`` left None take the kind's
    defaults (``export.routers.kinds``)."""

    table: Path
    router: str
    out: Path
    metric: str = "bertsim"
    temperature: float = 0.1
    seed: int = 0
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    max_length: int = 256
    layers: int | None = None
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    quality: str = "bertsim"
    cost_weight: float = 0.5
    throughput_weight: float = 0.0
    max_train_queries: int | None = None
    threads: int = 2
    progress: bool = True
    all_rows: bool = False  # train on the test split too (the shipped model, see --help)

    def label_spec(self) -> LabelSpec:
        return LabelSpec(metric=self.metric, temperature=self.temperature,
                         quality=self.quality, cost_weight=self.cost_weight,
                         throughput_weight=self.throughput_weight)

    def fit_config(self) -> FitConfig:
        d = router_kind(self.router).defaults
        return FitConfig(
            epochs=self.epochs if self.epochs is not None else d.epochs,
            batch_size=self.batch_size or d.batch_size,
            lr=self.lr or d.lr,
            patience=d.patience,
            seed=self.seed,
            threads=self.threads,
            progress=self.progress,
            layers=self.layers,
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", type=Path, required=True, help="expert table (.jsonl[.gz])")
    p.add_argument("--router", choices=list(KINDS), required=True, help="router kind to train")
    p.add_argument("--metric", choices=METRICS, default="bertsim", help="label metric")
    p.add_argument("--out", type=Path, required=True, help="folder for the trained router")
    p.add_argument("--temperature", type=float, default=0.1, help="soft-label softmax temperature")
    p.add_argument("--seed", type=int, default=0, help="seed for split, init and shuffling")
    p.add_argument(
        "--epochs", type=int, default=None, help="max epochs (early stopping may end sooner)"
    )
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="learning rate")
    p.add_argument("--max-length", type=int, default=256, help="max tokens per query (bert, knn)")
    p.add_argument("--layers", type=int, default=None,
                   help="bert: keep the first N of MiniLM's 6 encoder layers (faster router, "
                   "see bench.router_latency); default all")
    p.add_argument("--test-fraction", type=float, default=0.2, help="test share per dataset")
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation share of train")
    p.add_argument(
        "--quality",
        choices=("bertsim", "correct", "nll"),
        default="bertsim",
        help="quality part of --metric trilemma",
    )
    p.add_argument("--cost-weight", type=float, default=0.5, help="trilemma cost weight")
    p.add_argument(
        "--throughput-weight", type=float, default=0.0, help="trilemma throughput weight"
    )
    p.add_argument(
        "--max-train-queries",
        type=int,
        default=None,
        help="cap on training queries, drawn evenly over datasets (affordable BERT runs)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--all-rows", action="store_true",
                   help="train on every labelled query, the test split too: for the model "
                   "you ship after evaluating the same settings on the split; router.json "
                   "says so, and evaluating it on its own table's test split is refused")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="hide progress bars")


def train(cfg: TrainConfig) -> tuple[TrainedRouter, dict[str, Any]]:
    """The stage: returns the router (already saved to ``cfg.out``) and its log."""
    t0 = time.monotonic()
    from export.table import read_table

    kind = router_kind(cfg.router)
    if cfg.layers is not None and not kind.layers:
        layered = " or ".join(k for k, v in KINDS.items() if v.layers)
        raise PipelineError(f"--layers {cfg.layers}: only for --router {layered}")
    spec = cfg.label_spec()
    m = build_matrix(read_table(cfg.table))
    values = metric_values(m, spec)
    labels, mask = soft_labels(values, spec.temperature)
    train_idx, test_idx = split_indices(m, cfg.seed, cfg.test_fraction)
    if cfg.all_rows:
        train_idx = np.union1d(train_idx, test_idx)
    train_idx = np.intersect1d(train_idx, labelled_rows(values))
    train_idx = subsample_per_dataset(train_idx, m.datasets, cfg.max_train_queries, cfg.seed)
    if len(train_idx) < 2:
        raise TableError(f"only {len(train_idx)} training queries have a {cfg.metric!r} value")
    meta = RouterMeta(
        kind=cfg.router,
        experts=m.experts,
        metric=cfg.metric,
        temperature=spec.temperature,
        seed=cfg.seed,
        table_sha256=table_sha256(cfg.table),
        train_queries=len(train_idx),
        datasets=sorted(set(m.datasets)),
        max_length=cfg.max_length,
        label_spec=spec.__dict__.copy(),
        test_fraction=cfg.test_fraction,
    )
    fit = cfg.fit_config()
    val_idx = np.array([], dtype=int)
    if kind.validation:
        inner, val = validation_split(len(train_idx), cfg.val_fraction, fit.seed)
        train_idx, val_idx = train_idx[inner], train_idx[val]
    data = TrainingSet(meta, m, values, labels, mask, train_idx, val_idx, fit, Path(cfg.table),
                       cfg.all_rows)
    router, log = kind.fit(data)
    router.meta.extra = {**router.meta.extra,
                         "train_wall_s": round(time.monotonic() - t0, 2)}
    if cfg.all_rows:
        router.meta.extra["trained_on"] = "all rows (test split included)"
    router.save(cfg.out)
    log = {**log, "train_wall_s": router.meta.extra["train_wall_s"], "fit_config": asdict(fit)}
    (cfg.out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n", encoding="utf-8")
    return router, log


def run(args: argparse.Namespace) -> int:
    from export.cli import stage_config

    cfg = stage_config(TrainConfig, args)
    router, log = train(cfg)
    print(
        f"trained {router.kind} router on {router.meta.train_queries} queries "
        f"({len(router.experts)} experts, metric {router.meta.metric}) in "
        f"{log['train_wall_s']} s -> {cfg.out}",
        file=sys.stderr,
    )
    return 0
