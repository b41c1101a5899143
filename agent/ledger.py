"""The spend ledger: SQLite in WAL mode with synchronous=FULL, one row per cloud call.

A call first *reserves* its worst-case cost (prompt + max_tokens at the expert's prices)
in one ``BEGIN IMMEDIATE`` transaction that also checks every cap, so concurrent requests
can never reserve past a cap together. The prompt estimate is an upper bound by
construction (``agent.prompt_size``). After the call the row is *settled* to the
real usage, or *released* if the expert never answered. When the peer reported no usage
(the bridge counted it: ``estimated``), the row is settled with that upper bound as its
prompt, so a guess never under-counts. The real cost is recorded
as billed even in the (logged) case that it passes the reservation: the ledger must not
under-report spend. A crash leaves reservations in place; they keep counting against the
caps (the cloud may have billed them), so a crash can only make the ledger more
conservative, never overshoot. Committed rows survive a kill -9 (FULL sync).

Two backends speak :class:`SpendLedger`, the one interface the request path sees: this
file's :class:`Ledger`, a lone device's own, and ``agent.fleet_ledger.FleetLedger``, a
fleet's PostgreSQL database with offline leases (``ledger.url``).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol

from agent.errors import RequestError

log = logging.getLogger("edgeroute.ledger")

SCHEMA = [
    # Append-only list of migrations; the index is the schema version.
    """CREATE TABLE IF NOT EXISTS spend (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        day TEXT NOT NULL,
        month TEXT NOT NULL,
        expert TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('reserved', 'settled', 'released')),
        reserved_usd REAL NOT NULL,
        settled_usd REAL,
        prompt_tokens INTEGER,
        completion_tokens INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS spend_day ON spend (day, expert)",
    "CREATE INDEX IF NOT EXISTS spend_month ON spend (month, expert)",
    # 1 when the tokens were counted by the bridge (the peer sent no usage), not billed.
    "ALTER TABLE spend ADD COLUMN estimated INTEGER NOT NULL DEFAULT 0",
]

# What a row counts against the caps: the settled amount, or the full reservation while
# the outcome is unknown.
_COUNTED = "CASE state WHEN 'settled' THEN settled_usd WHEN 'reserved' THEN reserved_usd ELSE 0 END"


class BudgetExceededError(RequestError):
    """A cloud call would break a spend cap (HTTP 429)."""

    status_code = 429
    error_type = "budget_exceeded"


@dataclass(frozen=True)
class Caps:
    daily_usd: float | None = None
    monthly_usd: float | None = None
    expert_daily_usd: Mapping[str, float] | None = None
    expert_monthly_usd: Mapping[str, float] | None = None
    device_daily_usd: float | None = None
    device_monthly_usd: float | None = None


@dataclass(frozen=True)
class Limit:
    """One cap that applies to a call: over which rows it sums (every row, the expert's,
    this device's) and for which period. Both backends check the same list."""

    label: str
    period: Literal["day", "month"]
    scope: Literal["all", "expert", "device"]
    cap: float


def limits(caps: Caps, expert: str) -> list[Limit]:
    """Every cap that applies to a call of ``expert``, in the order refusals name them."""
    out = []
    if caps.daily_usd is not None:
        out.append(Limit("daily", "day", "all", caps.daily_usd))
    if caps.monthly_usd is not None:
        out.append(Limit("monthly", "month", "all", caps.monthly_usd))
    if caps.expert_daily_usd and expert in caps.expert_daily_usd:
        out.append(Limit(f"{expert} daily", "day", "expert", caps.expert_daily_usd[expert]))
    if caps.expert_monthly_usd and expert in caps.expert_monthly_usd:
        out.append(Limit(f"{expert} monthly", "month", "expert",
                         caps.expert_monthly_usd[expert]))
    if caps.device_daily_usd is not None:
        out.append(Limit("device daily", "day", "device", caps.device_daily_usd))
    if caps.device_monthly_usd is not None:
        out.append(Limit("device monthly", "month", "device", caps.device_monthly_usd))
    return out


def refusal(label: str, cap: float, spent: float, expert: str, worst_usd: float,
            note: str = "") -> BudgetExceededError:
    """The one wording of a refused reservation, whichever backend refused it."""
    return BudgetExceededError(
        f"{label} budget ${cap:.4f} has ${max(cap - spent, 0):.6f} left; {expert} may cost "
        f"${worst_usd:.6f}{note}; use a local expert or raise the cap",
        param="model", code="budget_exceeded")


@dataclass(frozen=True)
class LedgerGauges:
    """What /metrics shows of a ledger beside the spend counters: the fleet backend's lease
    and fleet budget per expert, whether the database answers, rows it has not seen yet.
    A lone device's ledger has none of these (empty, None)."""

    lease_usd: Mapping[str, float] = field(default_factory=dict)
    fleet_left_usd: Mapping[str, float] = field(default_factory=dict)
    online: bool | None = None
    unsynced_rows: int | None = None


class SpendLedger(Protocol):
    """The spend ledger as the request path, the CLI and calibration use it.

    ``reserve`` returns a row handle (an opaque int) or raises :class:`BudgetExceededError`
    naming the cap; each handle is then settled (the real cost), settled at its worst case
    (usage unknowable), or released (nothing billed), exactly once. A handle left open by a
    crash keeps counting against the caps. ``remaining`` is the least budget left over the
    caps of an expert (None: uncapped), read on every routing decision, so it must be cheap.
    """

    caps: Caps

    def reserve(self, expert: str, worst_usd: float) -> int: ...

    def settle(self, row_id: int, usd: float, prompt_tokens: int, completion_tokens: int,
               estimated: bool = False) -> None: ...

    def settle_worst_case(self, row_id: int) -> None: ...

    def release(self, row_id: int) -> None: ...

    def remaining(self, expert: str) -> float | None: ...

    def usage(self) -> dict[str, Any]: ...

    def gauges(self) -> LedgerGauges: ...

    def close(self) -> None: ...


def periods(ts: float) -> tuple[str, str]:
    """(UTC day, UTC month) of an epoch time: the periods caps count in."""
    d = datetime.fromtimestamp(ts, tz=timezone.utc)
    return d.strftime("%Y-%m-%d"), d.strftime("%Y-%m")


class Ledger:
    """Thread-safe; one connection guarded by a lock (calls are short)."""

    def __init__(self, path: Path, caps: Caps) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.caps = caps
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        for i, stmt in enumerate(SCHEMA[version:], start=version):
            self._db.execute(stmt)
            self._db.execute(f"PRAGMA user_version={i + 1}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _spent(self, column: str, period: str, expert: str | None) -> float:
        sql = f"SELECT COALESCE(SUM({_COUNTED}), 0) FROM spend WHERE {column} = ?"
        args: list[object] = [period]
        if expert is not None:
            sql += " AND expert = ?"
            args.append(expert)
        return float(self._db.execute(sql, args).fetchone()[0])

    def _limits(self, expert: str, day: str, month: str) -> list[tuple[str, float, float]]:
        """(label, cap, spent) for every cap that applies to ``expert``. Every row is this
        device's, so a device cap sums what a total cap sums."""
        out = []
        for lim in limits(self.caps, expert):
            period = day if lim.period == "day" else month
            out.append((lim.label, lim.cap, self._spent(
                lim.period, period, expert if lim.scope == "expert" else None)))
        return out

    def remaining(self, expert: str, now: float | None = None) -> float | None:
        """Least budget left over the caps that apply to ``expert`` (None: uncapped)."""
        day, month = periods(now or time.time())
        with self._lock:
            limits = self._limits(expert, day, month)
        return min((cap - spent for _, cap, spent in limits), default=None)

    def reserve(self, expert: str, worst_usd: float, now: float | None = None) -> int:
        """Reserve ``worst_usd`` atomically or raise BudgetExceededError naming the cap."""
        ts = now or time.time()
        day, month = periods(ts)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for label, cap, spent in self._limits(expert, day, month):
                    if spent + worst_usd > cap:
                        raise refusal(label, cap, spent, expert, worst_usd)
                cur = self._db.execute(
                    "INSERT INTO spend (ts, day, month, expert, state, reserved_usd) "
                    "VALUES (?, ?, ?, ?, 'reserved', ?)", (ts, day, month, expert, worst_usd))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(cur.lastrowid or 0)

    def settle(self, row_id: int, usd: float, prompt_tokens: int, completion_tokens: int,
               estimated: bool = False) -> None:
        """Record the real cost; ``estimated``: the token counts are the bridge's guess."""
        with self._lock:
            row = self._db.execute("SELECT reserved_usd FROM spend WHERE id=?",
                                   (row_id,)).fetchone()
            if row is not None and usd > row[0] + 1e-12:
                log.warning("call %d cost $%.6f, above its reservation $%.6f", row_id, usd,
                            row[0])
            self._db.execute(
                "UPDATE spend SET state='settled', settled_usd=?, prompt_tokens=?, "
                "completion_tokens=?, estimated=? WHERE id=? AND state='reserved'",
                (usd, prompt_tokens, completion_tokens, int(estimated), row_id))

    def settle_worst_case(self, row_id: int) -> None:
        """Settle at the full reservation when the real usage is unknowable."""
        with self._lock:
            self._db.execute(
                "UPDATE spend SET state='settled', settled_usd=reserved_usd "
                "WHERE id=? AND state='reserved'", (row_id,))

    def release(self, row_id: int) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE spend SET state='released' WHERE id=? AND state='reserved'", (row_id,))

    def usage(self, now: float | None = None) -> dict[str, Any]:
        """Spend per expert for today and this month, plus the caps' remaining budget."""
        day, month = periods(now or time.time())
        with self._lock:
            rows = self._db.execute(
                f"SELECT expert, SUM(CASE WHEN day=? THEN {_COUNTED} ELSE 0 END), "
                f"SUM({_COUNTED}), SUM(state='settled'), SUM(state='reserved') "
                "FROM spend WHERE month=? GROUP BY expert ORDER BY expert", (day, month)
            ).fetchall()
            total_day = self._spent("day", day, None)
            total_month = self._spent("month", month, None)
        return {
            "day": day, "month": month,
            "experts": {e: {"day_usd": d or 0.0, "month_usd": m or 0.0, "settled_calls": s,
                            "open_reservations": r} for e, d, m, s, r in rows},
            "total": {"day_usd": total_day, "month_usd": total_month},
            "caps": {"daily_usd": self.caps.daily_usd, "monthly_usd": self.caps.monthly_usd},
        }

    def gauges(self) -> LedgerGauges:
        return LedgerGauges()

    def durability(self) -> tuple[str, int]:
        """(journal_mode, synchronous) of the ledger's own connection: ``synchronous`` is
        per connection, so only this one can say whether commits are fsynced (2 = FULL)."""
        with self._lock:
            return (str(self._db.execute("PRAGMA journal_mode").fetchone()[0]),
                    int(self._db.execute("PRAGMA synchronous").fetchone()[0]))

    def settled_rows(self) -> int:
        with self._lock:
            return int(self._db.execute(
                "SELECT COUNT(*) FROM spend WHERE state='settled'").fetchone()[0])

    def integrity_ok(self) -> bool:
        with self._lock:
            return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
