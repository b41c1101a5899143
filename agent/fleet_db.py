"""The fleet ledger's database side: one psycopg 3 connection, every call time-bounded, and
psycopg's errors translated in one place (:meth:`FleetDb._call`) into
``LedgerUnavailableError``, the one thing the rest of the daemon knows of a database
that did not answer.

Bounds: libpq's ``connect_timeout``; the server's ``statement_timeout`` and
``lock_timeout``; ``tcp_user_timeout`` and TCP keepalives, so a connection to a host that
went silent fails instead of waiting for the kernel's retransmission timer. The request
path adds a hard bound of its own (``agent.fleet_ledger``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import LedgerConfigError, LedgerUnavailableError
from agent.fleet_schema import migrate
from agent.ledger import refusal

log = logging.getLogger("edgeroute.fleet")
T = TypeVar("T")
MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
RETRIES = 3  # serialization failures and deadlocks, which PostgreSQL asks us to retry


@dataclass(frozen=True)
class FleetConfig:
    """The ledger settings resolved once: the URL read from its file, the device id found."""

    dsn: str = field(repr=False)  # may hold a password
    device_id: str
    lease_usd: float | None = None
    lease_ttl_s: float = 3600.0
    renew_s: float = 10.0
    connect_timeout_s: int = 2
    statement_timeout_s: float = 2.0

    @classmethod
    def from_settings(cls, settings: Any) -> FleetConfig | None:
        """None when no ledger URL is set (the device's own SQLite ledger)."""
        led = settings.ledger
        dsn = ledger_url(led.url, led.url_file)
        if dsn is None:
            return None
        return cls(dsn=dsn, device_id=led.device_id or machine_id(),
                   lease_usd=led.lease_usd, lease_ttl_s=led.lease_ttl_s, renew_s=led.renew_s,
                   connect_timeout_s=led.connect_timeout_s,
                   statement_timeout_s=led.statement_timeout_s)


def ledger_url(url: Any, url_file: Path | None) -> str | None:
    """The URL from ``ledger.url`` or the file ``ledger.url_file`` (a relative name is
    looked up in $CREDENTIALS_DIRECTORY first, as API keys are)."""
    import os

    from cloud_bridge.credentials import CREDENTIALS_DIR_VAR, key_file_path

    if url is not None:
        text = url.get_secret_value().strip()
    elif url_file is not None:
        path = key_file_path(url_file, os.environ)
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise LedgerConfigError(
                f"cannot read ledger.url_file {str(path)!r} ({exc.strerror}); create it "
                f"(chmod 600) or set {CREDENTIALS_DIR_VAR} to the directory holding it") from exc
    else:
        return None
    if not text.startswith(("postgresql://", "postgres://")):
        raise LedgerConfigError("ledger.url must be a postgresql:// URL (the value is not "
                                "shown: it may hold a password); unset it for the device's "
                                "own SQLite ledger")
    return text


def machine_id() -> str:
    """The machine id systemd gives every installed system: stable, unique per device."""
    for path in MACHINE_ID_FILES:
        try:
            text = path.read_text(encoding="ascii").strip()
        except OSError:
            continue
        if text:
            return text
    raise LedgerConfigError("no machine id (/etc/machine-id) to name this device in the fleet "
                            "ledger; set EDGEROUTE_LEDGER__DEVICE_ID")


@dataclass(frozen=True)
class LeaseRow:
    """A lease as the database granted it: its row, size, period and when it ends."""

    id: int
    expert: str
    usd: float
    day: str
    month: str
    expires_ts: float


class FleetDb:
    """One connection (autocommit) to the fleet database; not thread-safe: one per thread."""

    def __init__(self, cfg: FleetConfig) -> None:
        self.cfg = cfg
        self.device = cfg.device_id
        self._conn: Any = None

    # -- the connection ------------------------------------------------------------------
    def _connect(self) -> Any:
        try:
            import psycopg
        except ImportError as exc:  # an optional dependency: `pip install edgeroute[fleet]`
            raise LedgerConfigError("ledger.url needs psycopg 3: pip install "
                                    "'edgeroute[fleet]' (or 'psycopg[binary]')") from exc
        ms = max(1, int(self.cfg.statement_timeout_s * 1000))
        conn = psycopg.connect(
            self.cfg.dsn, autocommit=True, connect_timeout=self.cfg.connect_timeout_s,
            application_name=f"edgeroute {self.device}"[:63], tcp_user_timeout=ms,
            keepalives=1, keepalives_idle=max(1, math.ceil(self.cfg.statement_timeout_s)),
            keepalives_interval=1, keepalives_count=2,
            options=f"-c statement_timeout={ms} -c lock_timeout={ms} "
                    f"-c idle_in_transaction_session_timeout={10 * ms}")
        try:
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _call(self, fn: Callable[[Any], T], *, idempotent: bool = True) -> T:
        """Run ``fn(conn)``, connecting first if needed; any database error is a
        LedgerUnavailableError and drops the connection (the next call reconnects).
        ``idempotent``: a connection found dead on reuse (the server restarted since) is
        replaced and the call run once more; a reservation is never repeated (it may have
        committed before the connection broke), it falls back to the lease instead."""
        import psycopg

        for attempt in range(RETRIES):
            fresh = self._conn is None or self._conn.closed
            try:
                if fresh:
                    self._conn = self._connect()
                return fn(self._conn)
            except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected):
                if attempt == RETRIES - 1:
                    raise LedgerUnavailableError("the fleet ledger kept aborting a "
                                                 "transaction (contention); try again") from None
                time.sleep(0.01 * (attempt + 1))
            except psycopg.Error as exc:
                self.close()
                stale = isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
                if idempotent and not fresh and stale and attempt < RETRIES - 1:
                    continue
                raise _unavailable(exc) from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection must not raise
                conn.close()

    def ping(self) -> float:
        """The database's clock (epoch seconds); connects and migrates when needed."""
        return float(self._call(
            lambda c: c.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()[0]))

    # -- calls ----------------------------------------------------------------------------
    def reserve(self, session: str, expert: str, usd: float,
                limits: Sequence[dict[str, Any]]) -> tuple[int, float | None]:
        """A fleet-funded reservation: (row id, least budget left after it), or raise the
        BudgetExceededError naming the cap."""
        row = self._call(lambda c: c.execute(
            "SELECT * FROM edgeroute_reserve(%s, %s, %s, %s::numeric, %s::jsonb)",
            (self.device, session, expert, _num(usd), json.dumps(list(limits)))).fetchone(),
            idempotent=False)
        row_id, label, cap, counted, left = row
        if row_id is None:
            raise refusal(f"{label}", float(cap), float(counted), expert, usd)
        return int(row_id), None if left is None else float(left)

    def apply(self, items: Iterable[tuple[int, str, float | None, int | None, int | None,
                                          bool]]) -> None:
        """Outcomes of fleet-funded calls recorded while the call was in flight (outbox):
        (row, 'settle'|'worst'|'release', usd, prompt, completion, estimated). Idempotent:
        only a row still reserved changes."""
        def run(c: Any) -> None:
            with c.transaction():
                for row_id, action, usd, p, k, est in items:
                    if action == "settle":
                        r = c.execute(
                            "UPDATE edgeroute_spend SET state='settled', settled_usd=%s::numeric,"
                            " prompt_tokens=%s, completion_tokens=%s, estimated=%s WHERE id=%s"
                            " AND device_id=%s AND state='reserved' RETURNING reserved_usd",
                            (_num(usd or 0.0), p, k, est, row_id, self.device)).fetchone()
                        if r is not None and (usd or 0.0) > float(r[0]) + 1e-12:
                            log.warning("call %d cost $%.6f, above its reservation $%.6f",
                                        row_id, usd, float(r[0]))
                    elif action == "worst":
                        c.execute("UPDATE edgeroute_spend SET state='settled', "
                                  "settled_usd=reserved_usd WHERE id=%s AND device_id=%s "
                                  "AND state='reserved'", (row_id, self.device))
                    else:
                        c.execute("UPDATE edgeroute_spend SET state='released' WHERE id=%s "
                                  "AND device_id=%s AND state='reserved'", (row_id, self.device))
        self._call(run)

    def upload(self, rows: Sequence[dict[str, Any]]) -> None:
        """Calls this device recorded locally (spent from a lease, or offline with no cap),
        each once (``local_uid``), their lease's ``used_usd`` raised in the same statement:
        the lease stops counting what its uploaded calls now count themselves."""
        self._call(lambda c: c.execute(UPLOAD_SQL, {"device": self.device,
                                                     "rows": json.dumps(list(rows))}))

    def reserved_sessions(self) -> set[str]:
        """Sessions of this device with fleet-funded calls still reserved."""
        rows = self._call(lambda c: c.execute(
            "SELECT DISTINCT session FROM edgeroute_spend WHERE device_id=%s AND kind='call' "
            "AND state='reserved'", (self.device,)).fetchall())
        return {str(r[0]) for r in rows}

    def resolve_sessions(self, sessions: Iterable[str]) -> int:
        """Settle the open calls of dead sessions at their worst case: whether the cloud
        billed them is unknowable, and a crash must never lower the counted spend."""
        return int(self._call(lambda c: c.execute(
            "UPDATE edgeroute_spend SET state='settled', settled_usd=reserved_usd, "
            "estimated=TRUE WHERE device_id=%s AND kind='call' AND state='reserved' "
            "AND session = ANY(%s)", (self.device, list(sessions))).rowcount))

    def open_leases(self) -> list[LeaseRow]:
        rows = self._call(lambda c: c.execute(
            "SELECT id, expert, reserved_usd, day, month, expires_ts FROM edgeroute_spend "
            "WHERE device_id=%s AND kind='lease' AND state='reserved'", (self.device,)).fetchall())
        return [LeaseRow(int(r[0]), r[1], float(r[2]), r[3], r[4], float(r[5])) for r in rows]

    def grant_lease(self, session: str, expert: str, usd: float, min_usd: float,
                    limits: Sequence[dict[str, Any]], ttl_s: float) -> LeaseRow | None:
        """A lease of up to ``usd`` (at least ``min_usd``) within every cap, or None."""
        row = self._call(lambda c: c.execute(
            "SELECT * FROM edgeroute_grant_lease(%s, %s, %s, %s::numeric, %s::numeric, "
            "%s::jsonb, %s)", (self.device, session, expert, _num(usd), _num(min_usd),
                               json.dumps(list(limits)), ttl_s)).fetchone())
        if row is None:
            return None
        return LeaseRow(int(row[0]), expert, float(row[1]), row[2], row[3], float(row[4]))

    def shrink_lease(self, lease_id: int, keep_usd: float) -> bool:
        """Return a lease's unspent part: it keeps holding only ``keep_usd`` (calls in
        flight or not yet uploaded); with nothing to keep it is settled at what its
        calls used. True when the database holds nothing of it any more."""
        def run(c: Any) -> bool:
            c.execute(
                "UPDATE edgeroute_spend SET reserved_usd = LEAST(reserved_usd, "
                "used_usd + %(keep)s::numeric), "
                "state = CASE WHEN %(keep)s::numeric <= 0 THEN 'settled' ELSE state END, "
                "settled_usd = CASE WHEN %(keep)s::numeric <= 0 THEN used_usd END "
                "WHERE id=%(id)s AND device_id=%(dev)s AND kind='lease' AND state='reserved'",
                {"keep": _num(keep_usd), "id": lease_id, "dev": self.device})
            r = c.execute("SELECT state FROM edgeroute_spend WHERE id=%s", (lease_id,)).fetchone()
            return r is None or r[0] != "reserved"
        return bool(self._call(run))

    def totals(self, scopes: Sequence[str]) -> tuple[str, str, dict[tuple[str, str], float]]:
        """(day, month, {(period kind, scope): counted}) now, by the database's clock."""
        def run(c: Any) -> tuple[str, str, dict[tuple[str, str], float]]:
            day, month = c.execute(
                "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD'), "
                "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM')").fetchone()
            rows = c.execute(
                "SELECT period, scope, counted FROM edgeroute_totals WHERE period = ANY(%s) "
                "AND scope = ANY(%s)", ([day, month], list(scopes))).fetchall()
            return day, month, {("day" if p == day else "month", s): float(v)
                                for p, s, v in rows}
        return self._call(run)

    def usage(self, device: str | None) -> dict[str, Any]:
        """Spend per device and expert, today and this month (one device, or the fleet),
        with the leases held and the fleet's totals."""
        from agent.fleet_usage import usage_query

        return self._call(lambda c: usage_query(c, device))

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Rows of one statement (profiles, the CLI), under the same bounds and errors."""
        def run(c: Any) -> list[tuple[Any, ...]]:
            cur = c.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []
        return self._call(run)


def _unavailable(exc: Exception) -> LedgerUnavailableError:
    state = getattr(exc, "sqlstate", None) or "connection"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return LedgerUnavailableError(f"fleet ledger unavailable ({state}: {first})")


def _num(x: float) -> str:
    """A USD amount as the decimal it prints as: NUMERIC sums are exact, so the totals the
    trigger keeps equal the rows' sums to the last digit."""
    return repr(float(x))


UPLOAD_SQL = """
WITH src AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(
        uid TEXT, lease_id BIGINT, ts DOUBLE PRECISION, day TEXT, month TEXT, expert TEXT,
        session TEXT, state TEXT, reserved_usd NUMERIC, settled_usd NUMERIC,
        prompt_tokens INTEGER, completion_tokens INTEGER, estimated BOOLEAN)),
ins AS (
    INSERT INTO edgeroute_spend (kind, ts, day, month, device_id, session, expert, state,
        reserved_usd, settled_usd, prompt_tokens, completion_tokens, estimated, lease_id,
        local_uid)
    SELECT 'call', ts, day, month, %(device)s, session, expert, state, reserved_usd,
        settled_usd, prompt_tokens, completion_tokens, estimated, lease_id, uid FROM src
    ON CONFLICT (local_uid) DO NOTHING
    RETURNING lease_id, CASE state WHEN 'settled' THEN settled_usd ELSE 0 END AS usd),
used AS (SELECT lease_id, SUM(usd) AS usd FROM ins WHERE lease_id IS NOT NULL
         GROUP BY lease_id)
UPDATE edgeroute_spend l SET used_usd = l.used_usd + used.usd FROM used
WHERE l.id = used.lease_id AND l.kind = 'lease'
"""
