"""``edgeroute train``: expert table -> soft labels -> a trained router folder.

    edgeroute train --table T --router {mlp,bert,knn} --metric M --out DIR
                    [--temperature 0.1] [--seed 0] [--epochs N]

The split (per-dataset seeded 20% test, or the table's ``split`` column) is recomputed
by ``edgeroute evaluate`` from the seed and fraction stored in router.json, so the test
queries are never trained on. ``train_log.json`` records the loss history and wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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
from export.routers.base import KINDS, RouterMeta, TrainedRouter
from export.routers.training import FitConfig, validation_split

# Per kind: epochs, batch size, learning rate, early-stopping patience.
DEFAULTS: dict[str, tuple[int, int, float, int]] = {
    "mlp": (60, 32, 1e-3, 4),
    "bert": (4, 16, 1e-4, 1),
    "knn": (0, 0, 0.0, 0),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", type=Path, required=True, help="expert table (.jsonl[.gz])")
    p.add_argument("--router", choices=KINDS, required=True, help="router kind to train")
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
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def fit_config(args: argparse.Namespace) -> FitConfig:
    epochs, batch, lr, patience = DEFAULTS[args.router]
    return FitConfig(
        epochs=args.epochs if args.epochs is not None else epochs,
        batch_size=args.batch_size or batch,
        lr=args.lr or lr,
        patience=patience,
        seed=args.seed,
        threads=args.threads,
        progress=not args.no_progress,
        layers=args.layers,
    )


def train(args: argparse.Namespace) -> tuple[TrainedRouter, dict[str, Any]]:
    """The stage as a function: returns the router (already saved to ``args.out``) and its log."""
    t0 = time.monotonic()
    from export.table import read_table

    if args.layers is not None and args.router != "bert":
        raise PipelineError(f"--layers {args.layers}: only for --router bert")
    spec = LabelSpec(
        metric=args.metric,
        temperature=args.temperature,
        quality=args.quality,
        cost_weight=args.cost_weight,
        throughput_weight=args.throughput_weight,
    )
    m = build_matrix(read_table(args.table))
    values = metric_values(m, spec)
    labels, mask = soft_labels(values, spec.temperature)
    train_idx, _ = split_indices(m, args.seed, args.test_fraction)
    train_idx = np.intersect1d(train_idx, labelled_rows(values))
    train_idx = subsample_per_dataset(train_idx, m.datasets, args.max_train_queries, args.seed)
    if len(train_idx) < 2:
        raise TableError(f"only {len(train_idx)} training queries have a {args.metric!r} value")
    meta = RouterMeta(
        kind=args.router,
        experts=m.experts,
        metric=args.metric,
        temperature=spec.temperature,
        seed=args.seed,
        table_sha256=table_sha256(args.table),
        train_queries=len(train_idx),
        datasets=sorted(set(m.datasets)),
        max_length=args.max_length,
        label_spec=spec.__dict__.copy(),
        test_fraction=args.test_fraction,
    )
    cfg = fit_config(args)
    router, log = _fit(
        args.router, meta, m.queries, labels, mask, train_idx, cfg, args.val_fraction
    )
    meta.extra = {"train_wall_s": round(time.monotonic() - t0, 2)}
    if args.router == "bert":
        meta.extra["head"] = "BertForSequenceClassification ([CLS] pooler + linear)"
        meta.extra["layers"] = router.layers  # type: ignore[attr-defined]
    router.save(args.out)
    log = {**log, "train_wall_s": meta.extra["train_wall_s"], "fit_config": cfg.__dict__}
    (args.out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n", encoding="utf-8")
    return router, log


def _fit(
    kind: str,
    meta: RouterMeta,
    queries: list[str],
    labels: np.ndarray,
    mask: np.ndarray,
    train_idx: np.ndarray,
    cfg: FitConfig,
    val_fraction: float,
) -> tuple[TrainedRouter, dict[str, Any]]:
    if kind == "knn":
        from export.routers.knn import train_knn

        return train_knn(meta, queries, labels, train_idx), {}
    inner, val = validation_split(len(train_idx), val_fraction, cfg.seed)
    tr, va = train_idx[inner], train_idx[val]
    if kind == "mlp":
        from export.routers.mlp import train_mlp

        return train_mlp(meta, queries, labels, mask, tr, va, cfg)
    from export.routers.bert import train_bert

    return train_bert(meta, queries, labels, mask, tr, va, cfg)


def run(args: argparse.Namespace) -> int:
    router, log = train(args)
    print(
        f"trained {router.kind} router on {router.meta.train_queries} queries "
        f"({len(router.experts)} experts, metric {router.meta.metric}) in "
        f"{log['train_wall_s']} s -> {args.out}",
        file=sys.stderr,
    )
    return 0
