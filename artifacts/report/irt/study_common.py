"""Shared by the irt study's steps (``study.py``, ``study_loo.py``, ``study_encoders.py``):
paths, the tables, routed quality, training an irt router on a table's split."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from export.labels import build_matrix, labelled_rows, split_indices  # noqa: E402
from export.routers.base import RouterMeta  # noqa: E402
from export.routers.irt import IrtRouter, train_on_matrix  # noqa: E402
from export.routers.irt_training import IrtConfig  # noqa: E402
from export.table import read_table, write_table  # noqa: E402

POOLED = REPO / "runs" / "pooled.jsonl.gz"
COMMITTED = REPO / "artifacts" / "expert_table.jsonl.gz"
WORK = REPO / "runs" / "irt"
SEEDS = (0, 1, 2, 3, 4)


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def meta_for(rows_path: Path, m: Any, seed: int, n_train: int) -> RouterMeta:
    from export.labels import table_sha256

    return RouterMeta(kind="irt", experts=list(m.experts), metric="correct", temperature=0.1,
                      seed=seed, table_sha256=table_sha256(rows_path), train_queries=n_train,
                      datasets=sorted(set(m.datasets)), max_length=128,
                      label_spec={"metric": "correct", "temperature": 0.1,
                                  "quality": "bertsim", "cost_weight": 0.5,
                                  "throughput_weight": 0.0},
                      test_fraction=0.2)


def routed_quality(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per query: the outcome of the expert with the highest P among those observed."""
    avail = ~np.isnan(y)
    pick = np.where(avail, p, -np.inf).argmax(axis=1)
    return y[np.arange(len(y)), pick]


def sources_of(rows: list[dict[str, Any]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in rows:
        out.setdefault(r["query_id"], r.get("source") or "?")
    return out


def macro(values: np.ndarray, groups: list[str]) -> dict[str, float]:
    g = np.array(groups)
    per = {s: float(np.nanmean(values[g == s])) for s in sorted(set(groups))}
    per["macro"] = float(np.mean(list(per.values())))
    return per


def chosen_config(seed: int = 0) -> IrtConfig:
    sel = json.loads((HERE / "select.json").read_text())
    return IrtConfig(**sel["chosen"], seed=seed)


# -- tables: 5 seeds, irt vs MLP ------------------------------------------------------------
def table_files() -> dict[str, Path]:
    rows = read_table(POOLED)
    out = {"expert_table": COMMITTED}
    for source in ("routerbench", "routerdc"):
        path = WORK / "tables" / f"{source}.jsonl.gz"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_table(path, [r for r in rows if r.get("source") == source])
        out[source] = path
    return out


def train_irt_on(table: Path, seed: int, out: Path, cfg: IrtConfig,
                 drop: str | None = None) -> tuple[IrtRouter, Any]:
    m = build_matrix(read_table(table))
    y = m.values["correct"]
    train, _ = split_indices(m, seed, 0.2)
    train = np.intersect1d(train, labelled_rows(y))
    if drop is not None:  # leave one expert out: its outcomes are never trained on
        m.values = {**m.values, "correct": y.copy()}
        m.values["correct"][:, m.experts.index(drop)] = np.nan
    meta = meta_for(table, m, seed, len(train))
    router, _ = train_on_matrix(m, meta, cfg, train, 0.1, f"{table.name} train", progress=False)
    if drop is not None:
        m.values["correct"] = y
    router.save(out)
    return router, m


def test_outcomes(table: Path, router_dir: Path) -> tuple[Any, np.ndarray, np.ndarray]:
    """(test matrix, test outcomes y, router scores on them) by evaluate's own split."""
    from export.held_out import held_out
    from export.routers.kinds import load_router

    r = load_router(router_dir)
    _, mt, q, _ = held_out(table, r.meta)
    order = [list(r.experts).index(e) for e in mt.experts]
    return mt, q, r.score_batch(mt.queries)[:, order]
