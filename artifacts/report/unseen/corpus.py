"""The pooled corpus as arrays, once: outcomes, costs, tokens and each cell's source, the
pooled train/test split, and every query's frozen MiniLM embedding (one layer, 128 tokens:
the shipped encoder). Reading the 700k-row pooled table takes a minute; the arrays are
cached under ``runs/unseen/corpus/`` so every later step loads them in a second.

Leave one source out needs to know where each (query, expert) cell came from: the pool
keeps one row per cell and names its ``source``; RouteLLM is two sources in the pool
(``routellm-gsm8k``, ``routellm-mmlu``) and one here.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

WORK = REPO / "runs" / "unseen"
POOLED = WORK / "pooled.jsonl.gz"
CACHE = WORK / "corpus"
SELECT = REPO / "artifacts" / "report" / "irt" / "select.json"

# held-out source -> the pool's source names it covers
SOURCES: dict[str, tuple[str, ...]] = {
    "routerbench": ("routerbench",),
    "routerdc": ("routerdc",),
    "routellm": ("routellm-gsm8k", "routellm-mmlu"),
    "routerarena": ("routerarena",),
    "zeroeval": ("zeroeval",),
    "mmlu-pro": ("mmlu-pro",),
}
CURRENT = ("routerbench", "routerdc", "routellm", "routerarena")  # the bar's four sources
COLUMNS = ("correct", "cost_usd", "input_tokens", "output_tokens")


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


@dataclass
class Corpus:
    query_ids: list[str]
    queries: list[str]
    datasets: list[str]
    splits: list[str | None]
    experts: list[str]
    values: dict[str, np.ndarray]  # column -> (queries, experts), NaN where absent
    source: np.ndarray  # (queries, experts) int8: index into ``source_names``, -1 none
    source_names: list[str]
    x: np.ndarray  # (queries, 384) float32 embeddings

    def cells_of(self, held: str) -> np.ndarray:
        """Boolean (queries, experts): the cells of held-out source ``held``."""
        codes = [self.source_names.index(s) for s in SOURCES[held] if s in self.source_names]
        return np.isin(self.source, codes)

    def split(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The pooled train/test split, as ``edgeroute train`` splits the pooled table."""
        from export.labels import OutcomeMatrix, split_indices

        m = OutcomeMatrix(self.query_ids, self.datasets, self.queries, self.splits,
                          self.experts, {})
        return split_indices(m, seed, 0.2)


def load() -> Corpus:
    if not (CACHE / "arrays.npz").is_file():
        build()
    meta = json.loads((CACHE / "meta.json").read_text())
    with np.load(CACHE / "arrays.npz") as z:
        values = {c: z[c] for c in COLUMNS}
        source = z["source"]
        x = z["x"]
    return Corpus(meta["query_ids"], meta["queries"], meta["datasets"], meta["splits"],
                  meta["experts"], values, source, meta["source_names"], x)


def build() -> None:
    """Pivot the pooled table (``edgeroute table pool``) and embed every query once."""
    from export.labels import build_matrix
    from export.routers.irt import embed
    from export.table import read_table

    log(f"reading {POOLED}")
    rows = read_table(POOLED)
    m = build_matrix(rows)
    names = sorted({str(r.get("source") or "?") for r in rows})
    qpos = {q: i for i, q in enumerate(m.query_ids)}
    epos = {e: j for j, e in enumerate(m.experts)}
    source = np.full((len(m), len(m.experts)), -1, dtype=np.int8)
    for r in rows:
        source[qpos[r["query_id"]], epos[r["expert"]]] = names.index(str(r.get("source") or "?"))
    del rows
    cfg = json.loads(SELECT.read_text())["chosen"]
    log(f"{len(m)} queries x {len(m.experts)} experts; embedding (cached per text)")
    x = embed(m.queries, int(cfg["layers"]), 128, threads=2, progress=False)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(CACHE / "arrays.npz", source=source, x=x.astype(np.float32),
             **{c: m.values[c] for c in COLUMNS})
    (CACHE / "meta.json").write_text(json.dumps({
        "query_ids": m.query_ids, "queries": m.queries, "datasets": m.datasets,
        "splits": m.splits, "experts": m.experts, "source_names": names}))
    log("corpus cached")


def describe(c: Corpus) -> dict[str, Any]:
    """Per held-out source: queries, experts, which columns it has."""
    out = {}
    for held in SOURCES:
        cells = c.cells_of(held)
        rows = np.flatnonzero(cells.any(axis=1))
        cols = np.flatnonzero(cells.any(axis=0))
        have = {k: float(np.isfinite(np.where(cells, c.values[k], np.nan)).sum()
                         / max(cells.sum(), 1)) for k in COLUMNS}
        out[held] = {"queries": int(len(rows)), "experts": int(len(cols)),
                     "cells": int(cells.sum()), "share_with": have,
                     "datasets": sorted({c.datasets[i] for i in rows})[:12]}
    return out


if __name__ == "__main__":
    corpus = load()
    print(json.dumps(describe(corpus), indent=1))
