"""What a fleet device keeps on its own disk: its leases, the calls it paid from them (or
made offline with no cap to check), and the outcomes of fleet-funded calls the database
has not heard yet (the outbox). SQLite, WAL, ``synchronous=FULL``, like the lone ledger:
a row committed here survives a kill -9 and reaches the database on a later sync.

The invariant that makes leases safe: the calls charged to a lease never count more than
the lease, ``SUM(counted) + worst <= granted`` checked in one ``BEGIN IMMEDIATE``
transaction per reservation. The database counts the lease in full until those calls are
uploaded, so what the fleet counts is never below what was spent.

Sessions: every ledger instance (the daemon, a calibration run) holds an exclusive
``flock`` on its own file under ``fleet-sessions/``; the kernel drops it when the process
dies, however it dies. A reserved row whose session's lock can be taken belongs to a dead
process and is resolved (settled at its worst case) by whoever syncs next.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.fleet_db import LeaseRow
from agent.ledger import periods

EPS_USD = 1e-9  # a lease is never filled closer than this: float sums vs NUMERIC sums

SCHEMA = [
    """CREATE TABLE lease (
        id INTEGER PRIMARY KEY,
        expert TEXT NOT NULL,
        day TEXT NOT NULL,
        month TEXT NOT NULL,
        granted_usd REAL NOT NULL,
        expires_ts REAL NOT NULL,
        open INTEGER NOT NULL,
        finished INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE spend (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        uid TEXT NOT NULL UNIQUE,
        session TEXT NOT NULL,
        lease_id INTEGER REFERENCES lease (id),
        ts REAL NOT NULL,
        day TEXT NOT NULL,
        month TEXT NOT NULL,
        expert TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('reserved', 'settled', 'released')),
        reserved_usd REAL NOT NULL,
        settled_usd REAL,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        estimated INTEGER NOT NULL DEFAULT 0,
        uploaded INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX spend_lease ON spend (lease_id, uploaded)",
    "CREATE INDEX spend_unsynced ON spend (uploaded, state)",
    """CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        row_id INTEGER NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('settle', 'worst', 'release')),
        usd REAL,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        estimated INTEGER NOT NULL DEFAULT 0
    )""",
]
_COUNTED = ("CASE state WHEN 'settled' THEN settled_usd WHEN 'reserved' THEN reserved_usd "
            "ELSE 0 END")


@dataclass(frozen=True)
class NoLease:
    """Why a call cannot be paid from a lease: what the lease has left (0: none usable)."""

    left_usd: float
    has_lease: bool


class LeaseStore:
    """Thread-safe; one connection guarded by a lock (calls are short)."""

    def __init__(self, path: Path, session: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.session = session
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            for i, stmt in enumerate(SCHEMA[version:], start=version):
                self._db.execute(stmt)
                self._db.execute(f"PRAGMA user_version={i + 1}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _q(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    # -- leases ----------------------------------------------------------------------------
    def _usable(self, expert: str, db_now: float, margin_s: float) -> tuple[Any, ...] | None:
        return self._db.execute(
            "SELECT id, day, month, granted_usd - COALESCE((SELECT SUM(" + _COUNTED + ") "
            "FROM spend WHERE lease_id = lease.id), 0) FROM lease WHERE expert=? AND open=1 "
            "AND expires_ts > ? ORDER BY id DESC LIMIT 1", (expert, db_now + margin_s)).fetchone()

    def lease_left(self, expert: str, db_now: float, margin_s: float) -> float:
        """What the usable lease of ``expert`` has left (0 without one)."""
        with self._lock:
            row = self._usable(expert, db_now, margin_s)
        return max(float(row[3]), 0.0) if row else 0.0

    def open_lease(self, expert: str) -> tuple[int, float, float, float] | None:
        """(id, granted, left, expires_ts) of the open lease of ``expert``."""
        rows = self._q(
            "SELECT id, granted_usd, granted_usd - COALESCE((SELECT SUM(" + _COUNTED + ") "
            "FROM spend WHERE lease_id = lease.id), 0), expires_ts FROM lease WHERE expert=? "
            "AND open=1 ORDER BY id DESC LIMIT 1", (expert,))
        return (int(rows[0][0]), float(rows[0][1]), float(rows[0][2]),
                float(rows[0][3])) if rows else None

    def add_lease(self, lease: LeaseRow, open_: bool) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO lease (id, expert, day, month, granted_usd, expires_ts, "
                "open) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (lease.id, lease.expert, lease.day, lease.month, lease.usd, lease.expires_ts,
                 int(open_)))

    def close_lease(self, lease_id: int) -> None:
        """No new call may spend it; what it still covers is returned on the next sync."""
        self._q("UPDATE lease SET open=0 WHERE id=?", (lease_id,))

    def open_experts(self) -> set[str]:
        """Experts this device holds an open lease for."""
        return {str(r[0]) for r in self._q("SELECT DISTINCT expert FROM lease WHERE open=1")}

    def known_leases(self) -> set[int]:
        return {int(r[0]) for r in self._q("SELECT id FROM lease")}

    def leases_to_shrink(self) -> list[tuple[int, float]]:
        """Closed leases the database still holds, with what they must keep holding: their
        calls not yet uploaded (in flight, or final but unsynced)."""
        rows = self._q(
            "SELECT id, COALESCE((SELECT SUM(" + _COUNTED + ") FROM spend WHERE "
            "lease_id = lease.id AND uploaded = 0), 0) FROM lease WHERE open=0 AND finished=0")
        return [(int(i), float(k)) for i, k in rows]

    def finish_lease(self, lease_id: int) -> None:
        self._q("UPDATE lease SET finished=1 WHERE id=?", (lease_id,))

    # -- calls ----------------------------------------------------------------------------
    def reserve(self, expert: str, worst_usd: float, capped: bool, db_now: float,
                margin_s: float) -> int | NoLease:
        """A local row paid from the usable lease of ``expert`` (``capped``), or a row no
        cap constrains; NoLease when the lease cannot cover ``worst_usd``."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                lease_id, day, month = None, None, None
                if capped:
                    row = self._usable(expert, db_now, margin_s)
                    if row is None or row[3] < worst_usd + EPS_USD:
                        self._db.execute("ROLLBACK")
                        return NoLease(max(float(row[3]), 0.0) if row else 0.0, row is not None)
                    lease_id, day, month = row[0], row[1], row[2]
                if day is None:
                    day, month = periods(db_now)
                cur = self._db.execute(
                    "INSERT INTO spend (uid, session, lease_id, ts, day, month, expert, state, "
                    "reserved_usd) VALUES (?, ?, ?, ?, ?, ?, ?, 'reserved', ?)",
                    (uuid.uuid4().hex, self.session, lease_id, db_now, day, month, expert,
                     worst_usd))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return int(cur.lastrowid or 0)

    def settle(self, row_id: int, usd: float, prompt_tokens: int, completion_tokens: int,
               estimated: bool) -> None:
        self._q("UPDATE spend SET state='settled', settled_usd=?, prompt_tokens=?, "
                "completion_tokens=?, estimated=? WHERE id=? AND state='reserved'",
                (usd, prompt_tokens, completion_tokens, int(estimated), row_id))

    def settle_worst_case(self, row_id: int) -> None:
        self._q("UPDATE spend SET state='settled', settled_usd=reserved_usd WHERE id=? "
                "AND state='reserved'", (row_id,))

    def release(self, row_id: int) -> None:
        self._q("UPDATE spend SET state='released' WHERE id=? AND state='reserved'", (row_id,))

    def final_unuploaded(self, limit: int = 500) -> list[dict[str, Any]]:
        """Settled or released rows the database has not seen, as ``FleetDb.upload`` wants."""
        rows = self._q(
            "SELECT id, uid, lease_id, ts, day, month, expert, session, state, reserved_usd, "
            "settled_usd, prompt_tokens, completion_tokens, estimated FROM spend "
            "WHERE uploaded=0 AND state != 'reserved' ORDER BY id LIMIT ?", (limit,))
        keys = ("id", "uid", "lease_id", "ts", "day", "month", "expert", "session", "state",
                "reserved_usd", "settled_usd", "prompt_tokens", "completion_tokens",
                "estimated")
        return [dict(zip(keys, r, strict=True)) | {"estimated": bool(r[13])} for r in rows]

    def mark_uploaded(self, ids: Iterable[int]) -> None:
        with self._lock:
            self._db.executemany("UPDATE spend SET uploaded=1 WHERE id=?", [(i,) for i in ids])

    def reserved_sessions(self) -> set[str]:
        return {str(r[0]) for r in self._q(
            "SELECT DISTINCT session FROM spend WHERE state='reserved' AND session != ?",
            (self.session,))}

    def resolve_sessions(self, sessions: Iterable[str]) -> int:
        """Settle the open rows of dead sessions at their worst case (see FleetDb)."""
        with self._lock:
            return sum(self._db.execute(
                "UPDATE spend SET state='settled', settled_usd=reserved_usd, estimated=1 "
                "WHERE state='reserved' AND session=?", (s,)).rowcount for s in sessions)

    # -- the outbox ---------------------------------------------------------------------
    def outbox_add(self, row_id: int, action: str, usd: float | None = None,
                   prompt_tokens: int | None = None, completion_tokens: int | None = None,
                   estimated: bool = False) -> None:
        self._q("INSERT INTO outbox (row_id, action, usd, prompt_tokens, completion_tokens, "
                "estimated) VALUES (?, ?, ?, ?, ?, ?)",
                (row_id, action, usd, prompt_tokens, completion_tokens, int(estimated)))

    def outbox(self, limit: int = 500) -> list[tuple[int, int, str, float | None, int | None,
                                                      int | None, bool]]:
        rows = self._q("SELECT id, row_id, action, usd, prompt_tokens, completion_tokens, "
                       "estimated FROM outbox ORDER BY id LIMIT ?", (limit,))
        return [(int(a), int(b), str(c), d, e, f, bool(g)) for a, b, c, d, e, f, g in rows]

    def outbox_done(self, ids: Iterable[int]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM outbox WHERE id=?", [(i,) for i in ids])

    def unsynced(self) -> int:
        """Rows the database has yet to hear of: outcomes in the outbox, finished local
        calls (one in flight is covered by its lease until it ends)."""
        (n,) = self._q("SELECT (SELECT COUNT(*) FROM outbox) + "
                       "(SELECT COUNT(*) FROM spend WHERE uploaded=0 AND state != 'reserved')")[0]
        return int(n)


class SessionLocks:
    """Which ledger sessions of this device are alive: each holds a flock on its file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._held: dict[str, int] = {}

    def hold(self, session: str) -> None:
        fd = os.open(self.folder / f"{session}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._held[session] = fd

    def release(self, session: str) -> None:
        fd = self._held.pop(session, None)
        if fd is not None:
            (self.folder / f"{session}.lock").unlink(missing_ok=True)
            os.close(fd)

    def sweep(self) -> None:
        """Forget the lock files of dead sessions (a SIGKILL leaves its file behind)."""
        for path in self.folder.glob("*.lock"):
            self.alive(path.stem)

    def alive(self, session: str) -> bool:
        """False when no process holds ``session``'s lock (its file is then removed)."""
        if session in self._held:
            return True
        path = self.folder / f"{session}.lock"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops a lock we took
        path.unlink(missing_ok=True)
        return False
