"""One leave-one-source-out fold: the query tower trained without the held-out source (none
of its questions, none of its experts' rows from any source), and the held-out source's
own outcomes split three ways.

- *train*: the held-out source's queries in the pooled train split, less validation: the
  rows a new expert's N answers are drawn from (``fit``);
- *val*: 25% of its train-split queries (at most 1,500), never trained on: what every
  choice of this study is made on;
- *test*: its queries in the pooled test split: reported, never chosen on.

The tower has the shipped shape (``artifacts/report/irt/select.json``) and trains as
``edgeroute train --router irt`` trains it (``export.routers.irt.fit_tower``, early stopping
on 10% of its own training queries), on the frozen embeddings of ``corpus.py``. It is cached
under ``runs/unseen/folds/<source>/``: a rerun loads it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from corpus import SELECT, SOURCES, WORK, Corpus, log

from agent.profiles import Profile, ProfileSet
from export.routers.irt import IrtConfig, Tower, expert_kind, fit_tower, p_matrix

VAL_SHARE, VAL_MAX = 0.25, 1500


@dataclass
class Fold:
    held: str
    experts: list[str]  # the held-out source's experts (columns of y)
    rows: np.ndarray  # its queries, indices into the corpus
    y: np.ndarray  # (rows, experts) correct, from the held-out source's cells only
    cost: np.ndarray  # cost_usd of those cells (NaN: none)
    in_tok: np.ndarray
    out_tok: np.ndarray
    part: dict[str, np.ndarray]  # "fit" / "val" / "test" -> positions into rows
    datasets: list[str]  # per row
    queries: list[str]  # per row
    x: np.ndarray  # frozen embeddings per row
    u: np.ndarray  # the fold tower's features per row
    d: np.ndarray
    known: ProfileSet  # the fold tower's profiles of the other sources' experts
    tower: Tower

    def kind(self, j: int) -> str:
        return expert_kind(self.experts[j])


def tower_config(seed: int = 0) -> IrtConfig:
    return IrtConfig(**json.loads(SELECT.read_text())["chosen"], seed=seed)


def _tower_dir(held: str) -> Any:
    return WORK / "folds" / held


def train_tower(c: Corpus, held: str, train: np.ndarray) -> tuple[Tower, ProfileSet]:
    """The tower and the known experts' profiles without ``held`` (cached)."""
    from export.routers.training import validation_split

    out = _tower_dir(held)
    if (out / "tower.npz").is_file():
        with np.load(out / "tower.npz") as z:
            tower = Tower.from_arrays(z)
        return tower, ProfileSet.read(out / "profiles.json")
    cells = c.cells_of(held)
    s_rows, s_cols = cells.any(axis=1), cells.any(axis=0)
    keep = train[~s_rows[train]]
    y = c.values["correct"][keep][:, ~s_cols]
    names = [e for j, e in enumerate(c.experts) if not s_cols[j]]
    labelled = ~np.isnan(y).all(axis=1)
    keep, y = keep[labelled], y[labelled]
    have = ~np.isnan(y).all(axis=0)
    y, names = y[:, have], [e for e, h in zip(names, have, strict=True) if h]
    cfg = tower_config()
    inner, val = validation_split(len(keep), 0.1, cfg.seed)
    log(f"fold {held}: tower on {len(keep)} queries x {len(names)} experts "
        f"(held out: {int(s_rows.sum())} queries, {int(s_cols.sum())} experts)")
    tower, theta, bias, tlog = fit_tower(c.x[keep], y, inner, val, cfg)
    u, d = tower(c.x[keep][inner])
    obs = (~np.isnan(y[inner])).sum(axis=0)
    profiles = []
    for j, name in enumerate(names):
        p = Profile(name, tuple(float(t) for t in theta[j]), float(bias[j]),
                    kind=expert_kind(name), fitted_on=f"loso without {held}",
                    observations=int(obs[j]))
        seen = ~np.isnan(y[inner][:, j])
        mean_p = float(p_matrix(u[seen], d[seen], [p]).mean())
        profiles.append(Profile(**{**asdict(p), "mean_p": mean_p}))
    eid = tower.encoder_id(cfg.layers, cfg.max_length)
    known = ProfileSet(eid, cfg.dim, {p.name: p for p in profiles})
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "tower.npz", **tower.arrays())
    known.write(out / "profiles.json")
    (out / "train.json").write_text(json.dumps({
        "held_out": held, "train_queries": int(len(keep)), "experts": names,
        "best_val_bce": tlog["best_val_bce"], "epochs": tlog["epochs"]}, indent=1))
    log(f"fold {held}: {tlog['epochs']} epochs, val BCE {tlog['best_val_bce']:.4f}")
    return tower, known


def build_fold(c: Corpus, held: str, seed: int = 0) -> Fold:
    train, test = c.split(seed)
    tower, known = train_tower(c, held, train)
    cells = c.cells_of(held)
    rows = np.flatnonzero(cells.any(axis=1))
    cols = np.flatnonzero(cells.any(axis=0))
    sub = cells[np.ix_(rows, cols)]

    def own(col: str) -> np.ndarray:
        return np.where(sub, c.values[col][np.ix_(rows, cols)], np.nan)

    y = own("correct")
    in_train = np.isin(rows, train)
    tr = np.flatnonzero(in_train & ~np.isnan(y).all(axis=1))
    te = np.flatnonzero(np.isin(rows, test) & ~np.isnan(y).all(axis=1))
    perm = np.random.default_rng(1000 + list(SOURCES).index(held)).permutation(tr)
    n_val = min(int(round(VAL_SHARE * len(tr))), VAL_MAX)
    part = {"val": np.sort(perm[:n_val]), "fit": np.sort(perm[n_val:]), "test": te}
    u, d = tower(c.x[rows])
    return Fold(held, [c.experts[j] for j in cols], rows, y, own("cost_usd"),
                own("input_tokens"), own("output_tokens"), part,
                [c.datasets[i] for i in rows], [c.queries[i] for i in rows], c.x[rows], u, d,
                known, tower)
