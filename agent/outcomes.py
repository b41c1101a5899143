"""The outcomes store: what this device learned about its own answers, beside the ledger.

``<data_dir>/outcomes.sqlite3`` (WAL; an append-only list of migrations, as the ledger's)::

    answers   one row per routed answer (or route-only decision): completion id, time,
              expert, the router's u(q) (float64s) and d(q), the encoder they came from,
              whether it was served; prompt and answer text only with ``store_text``
    outcomes  (answer, expert, source) -> score in [0, 1] and weight; source is feedback,
              check or shadow. A second score from one source replaces the first; a shadow
              grade can score another expert (the reference) on the same query
    refits    every ``edgeroute profile update`` and ``revert``: before/after figures, and
              the device profiles file's bytes before and after (what revert restores)

Why numbers only by default: refitting a profile needs u(q), d(q), the expert and the
outcome (``agent.ability_fit``), never the text, so a device can learn from its user without
keeping what the user wrote. Retention (``max_answers``, ``max_age_days``) deletes the
oldest answers with their outcomes; the refit history is kept.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agent.errors import AgentError, RequestError
from agent.routing import QueryFeatures

OUTCOMES_NAME = "outcomes.sqlite3"
Source = Literal["feedback", "check", "shadow"]
SOURCES: tuple[Source, ...] = ("feedback", "check", "shadow")
PRUNE_EVERY = 256  # inserts between two retention passes

SCHEMA = [
    # Append-only list of migrations; the index is the schema version.
    """CREATE TABLE IF NOT EXISTS answers (
        id TEXT PRIMARY KEY,
        ts REAL NOT NULL,
        expert TEXT NOT NULL,
        encoder TEXT NOT NULL,
        u BLOB NOT NULL,
        d REAL NOT NULL,
        served INTEGER NOT NULL,
        prompt TEXT,
        answer TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS answers_ts ON answers (ts)",
    """CREATE TABLE IF NOT EXISTS outcomes (
        answer_id TEXT NOT NULL REFERENCES answers (id) ON DELETE CASCADE,
        expert TEXT NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('feedback', 'check', 'shadow')),
        score REAL NOT NULL CHECK (score >= 0 AND score <= 1),
        weight REAL NOT NULL CHECK (weight > 0),
        ts REAL NOT NULL,
        PRIMARY KEY (answer_id, expert, source)
    )""",
    "CREATE INDEX IF NOT EXISTS outcomes_expert ON outcomes (expert)",
    """CREATE TABLE IF NOT EXISTS refits (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('update', 'revert')),
        applied INTEGER NOT NULL,
        summary TEXT NOT NULL,
        before BLOB,
        after BLOB,
        undone_by INTEGER
    )""",
]


class OutcomesError(AgentError):
    """A command on the outcomes store cannot do what was asked (CLI: one line, exit 2)."""


class UnknownCompletionError(RequestError):
    """Feedback names a completion id this device has no answer for (HTTP 404)."""

    status_code = 404
    error_type = "not_found_error"


@dataclass(frozen=True)
class Observations:
    """One expert's outcomes with their queries' features, in the order they were stored."""

    ids: list[str]
    u: np.ndarray  # (n, dim)
    d: np.ndarray
    y: np.ndarray  # scores in [0, 1]
    w: np.ndarray  # weights
    sources: list[str]

    def take(self, mask: np.ndarray) -> Observations:
        idx = np.flatnonzero(mask)
        return Observations([self.ids[i] for i in idx], self.u[idx], self.d[idx], self.y[idx],
                            self.w[idx], [self.sources[i] for i in idx])


@dataclass(frozen=True)
class Refit:
    """One row of the refit history."""

    id: int
    ts: float
    action: str
    applied: bool
    summary: dict[str, Any]
    before: bytes | None
    after: bytes | None
    undone_by: int | None


class OutcomeStore:
    """Thread-safe; one connection guarded by a lock (calls are short). The request path
    writes an answer row per answer; feedback, checks and shadow grades add outcomes."""

    def __init__(self, path: Path, *, max_answers: int = 100_000, max_age_days: float = 180.0,
                 store_text: bool = False) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_answers = max_answers
        self.max_age_s = max_age_days * 86400.0
        self.store_text = store_text
        self._lock = threading.Lock()
        self._inserts = 0
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # outcomes, not money: WAL's default
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            for i, stmt in enumerate(SCHEMA[version:], start=version):
                self._db.execute(stmt)
                self._db.execute(f"PRAGMA user_version={i + 1}")
        self.prune()

    @classmethod
    def of(cls, settings: Any) -> OutcomeStore:
        o = settings.outcomes
        return cls(Path(settings.paths.data_dir) / OUTCOMES_NAME, max_answers=o.max_answers,
                   max_age_days=o.max_age_days, store_text=o.store_text)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- answers ----------------------------------------------------------------------------
    def record_answer(self, completion_id: str, expert: str, features: QueryFeatures, *,
                      served: bool, prompt: str | None = None, answer: str | None = None,
                      now: float | None = None) -> None:
        """One answer (or route-only decision). The same id again (a cascade's escalation,
        a fallback) names the expert that answered last: the one feedback scores."""
        if not self.store_text:
            prompt = answer = None
        u = array("d", features.u).tobytes()
        with self._lock:
            self._db.execute(
                "INSERT INTO answers (id, ts, expert, encoder, u, d, served, prompt, answer) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "expert=excluded.expert, served=max(served, excluded.served), "
                "answer=COALESCE(excluded.answer, answer)",
                (completion_id, time.time() if now is None else now, expert, features.encoder,
                 u, float(features.d), int(served), prompt, answer))
            self._inserts += 1
            due = self._inserts % PRUNE_EVERY == 0
        if due:
            self.prune()

    def expert_of(self, completion_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT expert FROM answers WHERE id=?",
                                   (completion_id,)).fetchone()
        return None if row is None else str(row[0])

    def add_outcome(self, completion_id: str, source: Source, score: float, weight: float, *,
                    expert: str | None = None, now: float | None = None) -> tuple[str, bool]:
        """Store an outcome of ``completion_id``'s answer (``expert``: another expert
        graded on the same query, a shadow reference). Returns (expert, whether it replaced
        an earlier score from this source). Unknown id: UnknownCompletionError."""
        if source not in SOURCES:
            raise ValueError(f"outcome source {source!r} is not one of {SOURCES}")
        if not 0.0 <= score <= 1.0 or weight <= 0:
            raise ValueError(f"score {score} must be in [0, 1] and weight {weight} positive")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT expert FROM answers WHERE id=?",
                                       (completion_id,)).fetchone()
                if row is None:
                    raise UnknownCompletionError(
                        f"no answer with id {completion_id!r} on this device (unknown, or "
                        "older than the outcomes retention)", param="id",
                        code="unknown_completion_id")
                graded = expert or str(row[0])
                old = self._db.execute(
                    "SELECT 1 FROM outcomes WHERE answer_id=? AND expert=? AND source=?",
                    (completion_id, graded, source)).fetchone()
                self._db.execute(
                    "INSERT INTO outcomes (answer_id, expert, source, score, weight, ts) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (answer_id, expert, source) DO "
                    "UPDATE SET score=excluded.score, weight=excluded.weight, ts=excluded.ts",
                    (completion_id, graded, source, float(score), float(weight),
                     time.time() if now is None else now))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return graded, old is not None

    def observations(self, encoder: str) -> dict[str, Observations]:
        """Every expert's outcomes on queries scored by ``encoder`` (u from another query
        tower lives in another space), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT o.expert, a.id, a.u, a.d, o.score, o.weight, o.source FROM outcomes o "
                "JOIN answers a ON a.id = o.answer_id WHERE a.encoder=? "
                "ORDER BY a.ts, a.id, o.source", (encoder,)).fetchall()
        grouped: dict[str, list[Any]] = {}
        for row in rows:
            grouped.setdefault(row[0], []).append(row[1:])
        out = {}
        for expert, items in grouped.items():
            u = np.array([np.frombuffer(it[1], dtype=np.float64) for it in items])
            out[expert] = Observations([it[0] for it in items], u,
                                       np.array([it[2] for it in items], dtype=np.float64),
                                       np.array([it[3] for it in items], dtype=np.float64),
                                       np.array([it[4] for it in items], dtype=np.float64),
                                       [it[5] for it in items])
        return out

    def summary(self) -> dict[str, Any]:
        """Answers and outcomes per expert (by source), and the last refit: /health, doctor."""
        with self._lock:
            answers = self._db.execute(
                "SELECT expert, COUNT(*) FROM answers GROUP BY expert").fetchall()
            outcomes = self._db.execute(
                "SELECT expert, source, COUNT(*) FROM outcomes GROUP BY expert, source"
            ).fetchall()
        experts: dict[str, dict[str, Any]] = {}
        for expert, n in answers:
            experts.setdefault(expert, _empty())["answers"] = n
        for expert, source, n in outcomes:
            row = experts.setdefault(expert, _empty())
            row["outcomes"][source] = n
            row["outcomes_total"] += n
        last = self.refits(last=1)
        return {"answers": sum(r["answers"] for r in experts.values()),
                "outcomes": sum(r["outcomes_total"] for r in experts.values()),
                "experts": experts,
                "last_refit": refit_line(last[0]) if last else None}

    def export(self) -> Iterator[dict[str, Any]]:
        """Every answer with its outcomes (``edgeroute outcomes export``)."""
        with self._lock:
            answers = self._db.execute(
                "SELECT id, ts, expert, encoder, u, d, served, prompt, answer FROM answers "
                "ORDER BY ts, id").fetchall()
            outcomes = self._db.execute(
                "SELECT answer_id, expert, source, score, weight, ts FROM outcomes").fetchall()
        by_answer: dict[str, list[dict[str, Any]]] = {}
        for aid, expert, source, score, weight, ts in outcomes:
            by_answer.setdefault(aid, []).append({"expert": expert, "source": source,
                                                  "score": score, "weight": weight, "ts": ts})
        for aid, ts, expert, encoder, u, d, served, prompt, answer in answers:
            row: dict[str, Any] = {
                "id": aid, "ts": ts, "expert": expert, "encoder": encoder,
                "u": np.frombuffer(u, dtype=np.float64).tolist(), "d": d,
                "served": bool(served), "outcomes": by_answer.get(aid, [])}
            if prompt is not None or answer is not None:
                row |= {"prompt": prompt, "answer": answer}
            yield row

    def purge(self) -> int:
        """Delete every answer and outcome (the refit history stays); returns the answers."""
        with self._lock:
            n = int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])
            self._db.execute("DELETE FROM outcomes")
            self._db.execute("DELETE FROM answers")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.execute("VACUUM")  # deleted text must not linger in free pages
        return n

    def prune(self, now: float | None = None) -> int:
        """Retention: drop answers older than ``max_age_days`` and beyond ``max_answers``."""
        cutoff = (time.time() if now is None else now) - self.max_age_s
        with self._lock:
            old = self._db.execute("DELETE FROM answers WHERE ts < ?", (cutoff,)).rowcount
            over = self._db.execute(
                "DELETE FROM answers WHERE id IN (SELECT id FROM answers ORDER BY ts DESC, "
                "id DESC LIMIT -1 OFFSET ?)", (self.max_answers,)).rowcount
        return int(old) + int(over)

    # -- the refit history (agent.refit) ----------------------------------------------------
    def add_refit(self, action: str, applied: bool, summary: Mapping[str, Any],
                  before: bytes | None, after: bytes | None, *, undoes: int | None = None,
                  now: float | None = None) -> int:
        """One update or revert; a revert marks the update it undid, in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(
                    "INSERT INTO refits (ts, action, applied, summary, before, after) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (time.time() if now is None else now, action, int(applied),
                     json.dumps(summary), before, after))
                rid = int(cur.lastrowid or 0)
                if undoes is not None:
                    self._db.execute("UPDATE refits SET undone_by=? WHERE id=?", (rid, undoes))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return rid

    def refits(self, *, last: int | None = None) -> list[Refit]:
        """The history, newest first."""
        sql = ("SELECT id, ts, action, applied, summary, before, after, undone_by FROM refits "
               "ORDER BY id DESC")
        with self._lock:
            rows = self._db.execute(sql + (f" LIMIT {int(last)}" if last else "")).fetchall()
        return [Refit(r[0], r[1], r[2], bool(r[3]), json.loads(r[4]), r[5], r[6], r[7])
                for r in rows]


def _empty() -> dict[str, Any]:
    return {"answers": 0, "outcomes": dict.fromkeys(SOURCES, 0), "outcomes_total": 0}


def refit_line(r: Refit) -> dict[str, Any]:
    """A refit as /health and ``profile history --json`` show it (no file bytes)."""
    return {"id": r.id, "at": round(r.ts, 3), "action": r.action, "applied": r.applied,
            "undone_by": r.undone_by, **r.summary}


def doctor_rows(settings: Any) -> list[tuple[str, str, str]]:
    """``edgeroute doctor``'s rows: outcomes collected per configured expert, the last
    refit. Reads the store file (never creates one)."""
    o = settings.outcomes
    if not o.enabled:
        return [("outcomes", "ok", "off (outcomes.enabled=false): answers are not kept")]
    path = Path(settings.paths.data_dir) / OUTCOMES_NAME
    if not path.is_file():
        return [("outcomes", "ok", f"none yet ({path})")]
    try:
        store = OutcomeStore.of(settings)
        try:
            summary = store.summary()
        finally:
            store.close()
    except sqlite3.Error as exc:
        return [("outcomes", "warn", f"{path} unreadable: {exc}")]
    text = "with prompt and answer text" if o.store_text else "no text"
    rows = [("outcomes", "ok", f"{summary['answers']} answers, {summary['outcomes']} outcomes "
                               f"({text}) in {path}")]
    for name in settings.expert_names():
        e = summary["experts"].get(name, _empty())
        by = ", ".join(f"{s} {n}" for s, n in e["outcomes"].items())
        need = "" if e["outcomes_total"] >= o.refit_min_outcomes else (
            f"; a refit needs {o.refit_min_outcomes}")
        rows.append((f"outcomes {name}", "ok", f"{e['answers']} answers; outcomes: {by}{need}"))
    last = summary["last_refit"]
    if last is None:
        rows.append(("last refit", "ok", "none yet (`edgeroute profile update`)"))
    else:
        at = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(last["at"]))
        what = (f"revert of update {last.get('reverts')}" if last["action"] == "revert" else
                "applied " + (", ".join(n for n, f in last.get("experts", {}).items()
                                        if f["applied"]) or "nothing"))
        rows.append(("last refit", "ok", f"#{last['id']} at {at}: {what}"))
    return rows
