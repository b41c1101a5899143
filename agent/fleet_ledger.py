"""The fleet's spend ledger: a :class:`SpendLedger` over a PostgreSQL database shared by
every device, with offline leases kept on the device (``agent.lease_store``).

Who pays for a cloud call, in order:

1. **the fleet**: ``edgeroute_reserve`` checks every cap (the fleet's, the expert's, this
   device's) against the counted spend of all devices, outstanding leases included, and
   inserts the reservation, atomically (``agent.fleet_schema``);
2. **this device's lease** for the expert, when the fleet refused (its caps are full of
   leases and calls: a busy device spends its own lease rather than stranding it) or the
   database did not answer within ``statement_timeout_s`` (offline);
3. nobody: BudgetExceededError, and the dispatcher answers locally or refuses
   (``budget.on_exceeded``).

A lease is a row of the database counted against the fleet's caps in full until the calls
paid from it are uploaded, and a device never charges a lease more than it holds; so the
fleet's counted spend is never below what was spent, online or not, and never passes a
cap (the bound and what a lease can strand: docs/fleet.md).

Outcomes of fleet-funded calls (settle, release) go to the local outbox and reach the
database from the sync thread, which also uploads lease-paid calls, resolves the open rows
of dead sessions of this device, renews leases (returning their unspent part) and keeps a
snapshot of the fleet's totals for :meth:`remaining`. Only ``reserve`` talks to the
database on the request path, on a worker thread of its own with a hard time bound.
"""

from __future__ import annotations

import fcntl
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import LedgerConfigError, LedgerUnavailableError
from agent.fleet_db import FleetConfig, FleetDb
from agent.lease_store import LeaseStore, NoLease, SessionLocks
from agent.ledger import BudgetExceededError, Caps, LedgerGauges, Limit, limits

log = logging.getLogger("edgeroute.fleet")
T = TypeVar("T")
LEASE_SHARE = 0.01  # default lease: this share of the tightest cap that applies
MIN_GRANT_SHARE = 0.1  # a lease smaller than this share of its size is not worth a row
CLOCK_MARGIN_S = 60.0  # a lease is not spent this close to its end (clock drift offline)
LOCAL_FILE = "fleet-ledger.sqlite3"


@dataclass
class _View:
    """What the request path knows of the database without asking it: reachable or not,
    its clock, and the fleet's totals at the last sync. One lock; reads are cheap."""

    online: bool = False
    offset_s: float = 0.0  # database clock minus this machine's
    day: str = ""
    counted: dict[tuple[str, str], float] = field(default_factory=dict)
    left_after: dict[str, float] = field(default_factory=dict)  # fresher, from reserve
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def db_now(self) -> float:
        return time.time() + self.offset_s


class _Rpc:
    """Request-path database calls on a worker thread of their own: a call is cut at
    ``statement_timeout_s`` however the connection hangs. A call cut short may still
    commit later; ``on_late`` then gets its result (a reservation: released)."""

    def __init__(self, cfg: FleetConfig) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        self._pool, self._db = self._fresh()

    def _fresh(self) -> tuple[ThreadPoolExecutor, FleetDb]:
        return ThreadPoolExecutor(1, thread_name_prefix="edgeroute-ledger"), FleetDb(self.cfg)

    def call(self, fn: Callable[[FleetDb], T], on_late: Callable[[T], None] | None = None) -> T:
        with self._lock:
            pool, db = self._pool, self._db
        fut = pool.submit(fn, db)
        try:
            return fut.result(timeout=self.cfg.statement_timeout_s)
        except FuturesTimeout:
            if on_late is not None:
                fut.add_done_callback(
                    lambda f: on_late(f.result()) if f.exception() is None else None)
            with self._lock:  # the stuck thread ends on its own (its socket's bounds)
                if self._pool is pool:
                    pool.shutdown(wait=False)
                    self._pool, self._db = self._fresh()
            raise LedgerUnavailableError(f"the fleet ledger did not answer within "
                                         f"{self.cfg.statement_timeout_s:g} s") from None

    def reset(self) -> None:
        """Drop the connection (the database came back: the old one is likely dead)."""
        with self._lock:
            self._pool.submit(self._db.close)

    def close(self) -> None:
        with self._lock:
            self._pool.submit(self._db.close)
            self._pool.shutdown(wait=False)


class FleetLedger:
    """SpendLedger of one device of a fleet. ``holds_leases``: this process takes and
    renews the device's leases (the daemon); a CLI run (calibration) spends them offline
    but leaves them to the daemon."""

    def __init__(self, cfg: FleetConfig, caps: Caps, experts: Sequence[str], data_dir: Path,
                 *, holds_leases: bool = False) -> None:
        try:
            import psycopg  # noqa: F401  (fail at start-up, not in the sync thread)
        except ImportError as exc:
            raise LedgerConfigError("ledger.url needs psycopg 3: pip install "
                                    "'edgeroute[fleet]' (or 'psycopg[binary]')") from exc
        self.cfg = cfg
        self.caps = caps
        self.device_id = cfg.device_id
        self.holds_leases = holds_leases
        self.session = uuid.uuid4().hex
        self._experts = list(experts)
        self._data_dir = Path(data_dir)
        self._sessions = SessionLocks(self._data_dir / "fleet-sessions")
        self._sessions.hold(self.session)
        self._sessions.sweep()
        self.local = LeaseStore(self._data_dir / LOCAL_FILE, self.session)
        self._view = _View()
        self._rpc = _Rpc(cfg)
        self._sync_db = FleetDb(cfg)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lease_low = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edgeroute-fleet-sync",
                                        daemon=True)
        self._thread.start()

    # -- SpendLedger ---------------------------------------------------------------------
    def reserve(self, expert: str, worst_usd: float) -> int:
        """A row handle: positive, the database's row (fleet-funded); negative, a local row
        paid from this device's lease."""
        lims = limits(self.caps, expert)
        wire = self._wire(lims, expert)
        refused: BudgetExceededError | None = None
        if self._view.online:
            try:
                row, left = self._rpc.call(
                    lambda db: db.reserve(self.session, expert, worst_usd, wire),
                    on_late=self._abandoned)
            except BudgetExceededError as exc:
                refused = exc
            except LedgerUnavailableError as exc:
                self._offline(exc)
            else:
                with self._view.lock:
                    if left is not None:
                        self._view.left_after[expert] = left
                return row
        got = self.local.reserve(expert, worst_usd, bool(lims), self._view.db_now(),
                                 CLOCK_MARGIN_S)
        if isinstance(got, NoLease):
            if refused is not None or got.has_lease:
                self._lease_low.set()
            raise self._no_lease(expert, worst_usd, got, refused)
        self._wake.set()
        return -got

    def settle(self, row_id: int, usd: float, prompt_tokens: int, completion_tokens: int,
               estimated: bool = False) -> None:
        if row_id < 0:
            self.local.settle(-row_id, usd, prompt_tokens, completion_tokens, estimated)
        else:
            self.local.outbox_add(row_id, "settle", usd, prompt_tokens, completion_tokens,
                                  estimated)
        self._wake.set()

    def settle_worst_case(self, row_id: int) -> None:
        if row_id < 0:
            self.local.settle_worst_case(-row_id)
        else:
            self.local.outbox_add(row_id, "worst")
        self._wake.set()

    def release(self, row_id: int) -> None:
        if row_id < 0:
            self.local.release(-row_id)
        else:
            self.local.outbox_add(row_id, "release")
        self._wake.set()

    def remaining(self, expert: str) -> float | None:
        """The most one call of ``expert`` may reserve now: the fleet's least budget left
        (last sync) or this device's lease, whichever is more; None when no cap applies
        or, online, before the first sync."""
        lims = limits(self.caps, expert)
        if not lims:
            return None
        lease = self.local.lease_left(expert, self._view.db_now(), CLOCK_MARGIN_S)
        if not self._view.online:
            return lease
        fleet = self._fleet_left(expert, lims)
        return None if fleet is None else max(fleet, lease)

    def usage(self) -> dict[str, Any]:
        """This device's spend from the database (raises LedgerUnavailableError offline)."""
        out = self._rpc.call(lambda db: db.usage(self.device_id))
        out["caps"] = {"daily_usd": self.caps.daily_usd, "monthly_usd": self.caps.monthly_usd}
        return out

    def gauges(self) -> LedgerGauges:
        now = self._view.db_now()
        lease = {e: self.local.lease_left(e, now, CLOCK_MARGIN_S) for e in self._experts
                 if limits(self.caps, e)}
        fleet: dict[str, float] = {}
        for e in self._experts:
            left = self._fleet_left(e, limits(self.caps, e))
            if left is not None:
                fleet[e] = left
        return LedgerGauges(lease, fleet, self._view.online, self.local.unsynced())

    def close(self) -> None:
        """A last sync (outcomes, uploads, leases returned), within its time bounds."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=4 * self.cfg.statement_timeout_s
                          + self.cfg.connect_timeout_s + 5)
        self._rpc.close()
        self._sync_db.close()
        self.local.close()
        self._sessions.release(self.session)

    def wait_synced(self, timeout_s: float) -> bool:
        """Wake the sync thread until the database has every row (tests, the CLI)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._view.online and self.local.unsynced() == 0:
                return True
            self._wake.set()
            time.sleep(0.05)
        return False

    # -- helpers -------------------------------------------------------------------------
    def _scope(self, lim: Limit, expert: str) -> str:
        return {"all": "all", "expert": f"expert:{expert}",
                "device": f"device:{self.device_id}"}[lim.scope]

    def _wire(self, lims: Sequence[Limit], expert: str) -> list[dict[str, Any]]:
        """Limits as the database functions take them; fleet caps say so in refusals."""
        return [{"label": lim.label if lim.scope == "device" else f"fleet {lim.label}",
                 "period": lim.period, "cap": lim.cap, "scope": self._scope(lim, expert)}
                for lim in lims]

    def _fleet_left(self, expert: str, lims: Sequence[Limit]) -> float | None:
        if not lims:
            return None
        with self._view.lock:
            if expert in self._view.left_after:
                return self._view.left_after[expert]
            if not self._view.day:
                return None
            return min(lim.cap - self._view.counted.get(
                (lim.period, self._scope(lim, expert)), 0.0) for lim in lims)

    def _lease_size(self, lims: Sequence[Limit]) -> float:
        if not lims:
            return 0.0
        if self.cfg.lease_usd is not None:
            return self.cfg.lease_usd
        return LEASE_SHARE * min(lim.cap for lim in lims)

    def _no_lease(self, expert: str, worst: float, got: NoLease,
                  refused: BudgetExceededError | None) -> BudgetExceededError:
        lease = (f"this device's lease for {expert} has ${got.left_usd:.6f} left"
                 if got.has_lease else f"this device holds no lease for {expert}")
        if refused is not None:
            return BudgetExceededError(f"{refused.message}; {lease}", param="model",
                                       code="budget_exceeded")
        return BudgetExceededError(
            f"the fleet ledger is unreachable ({self._view.error}) and {lease}; {expert} "
            f"may cost ${worst:.6f}; answer with a local expert until it is back",
            param="model", code="budget_exceeded")

    def _abandoned(self, result: tuple[int, float | None]) -> None:
        """A reservation that committed after the request path gave up on it."""
        self.local.outbox_add(result[0], "release")
        self._wake.set()

    def _offline(self, exc: Exception) -> None:
        with self._view.lock:
            was, self._view.online = self._view.online, False
            self._view.error = str(exc)
        if was:
            log.warning("fleet ledger offline: %s; spending this device's leases", exc)

    # -- the sync thread -----------------------------------------------------------------
    def _loop(self) -> None:
        last_full = float("-inf")
        while True:
            final = self._stop.is_set()
            full = (final or self._lease_low.is_set()
                    or time.monotonic() - last_full >= self.cfg.renew_s)
            if full:
                last_full = time.monotonic()
            self._step(full, final)
            if final:
                return
            if self._view.online:
                self._wake.wait(self.cfg.renew_s)
            else:  # offline: settles must not turn into a storm of connection attempts
                self._stop.wait(self.cfg.renew_s)
            self._wake.clear()

    def _step(self, full: bool, final: bool) -> None:
        try:
            with self._sync_lock():
                db = self._sync_db
                t0 = time.time()
                now = db.ping()
                offset = now - (t0 + time.time()) / 2
                if not self._view.online:
                    with self._view.lock:
                        self._view.offset_s = offset
                self._flush(db)
                if full:
                    self._resolve(db)
                    if self.holds_leases:
                        self._leases(db, final)
                    self._snapshot(db)
            with self._view.lock:
                back = not self._view.online
                self._view.online, self._view.offset_s, self._view.error = True, offset, None
            if back:
                self._rpc.reset()
                log.info("fleet ledger online (device %s)", self.device_id)
        except LedgerUnavailableError as exc:
            self._offline(exc)
        except LedgerConfigError as exc:
            log.error("fleet ledger not used: %s", exc)
            self._offline(exc)
        except Exception as exc:  # never let the sync thread die: the device stays offline
            log.exception("fleet ledger sync failed")
            self._offline(exc)

    @contextmanager
    def _sync_lock(self) -> Iterator[None]:
        """One process of this data dir syncs at a time (the daemon, a calibration run)."""
        with open(self._data_dir / "fleet-sync.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def _flush(self, db: FleetDb) -> None:
        items = self.local.outbox()
        if items:
            db.apply([i[1:] for i in items])
            self.local.outbox_done([i[0] for i in items])
        rows = self.local.final_unuploaded()
        if rows:
            db.upload(rows)
            self.local.mark_uploaded([r["id"] for r in rows])
        if len(items) >= 500 or len(rows) >= 500:
            self._wake.set()

    def _resolve(self, db: FleetDb) -> None:
        """Open rows of this device's dead sessions (a SIGKILL mid-call): settled at their
        worst case, so they keep counting what they may have cost, and close."""
        dead = {s for s in self.local.reserved_sessions() if not self._sessions.alive(s)}
        if dead:
            n = self.local.resolve_sessions(dead)
            log.warning("settled %d lease-paid call(s) left open by a dead process at their "
                        "worst case", n)
            self._wake.set()
        dead = {s for s in db.reserved_sessions() - {self.session}
                if not self._sessions.alive(s)}
        if dead:
            n = db.resolve_sessions(dead)
            log.warning("settled %d fleet call(s) left open by a dead process at their "
                        "worst case", n)

    def _leases(self, db: FleetDb, final: bool) -> None:
        """Adopt leases the database holds for this device and this disk forgot (a crash
        between grant and record: returned at once), close stale ones, return what closed
        ones no longer cover, then take a fresh lease per capped expert."""
        known = self.local.known_leases()
        for lease in db.open_leases():
            if lease.id not in known:
                self.local.add_lease(lease, open_=False)
        now = self._view.db_now()
        for expert in self.local.open_experts() - set(self._experts):  # no longer configured
            cur = self.local.open_lease(expert)
            if cur is not None:
                self.local.close_lease(cur[0])
        for expert in self._experts:
            cur = self.local.open_lease(expert)
            size = self._lease_size(limits(self.caps, expert))
            if cur is not None and (final or self._stale(expert, cur, size, now)):
                self.local.close_lease(cur[0])
        for lease_id, keep in self.local.leases_to_shrink():
            if db.shrink_lease(lease_id, keep):
                self.local.finish_lease(lease_id)
        if final:
            return
        for expert in self._experts:
            lims = limits(self.caps, expert)
            size = self._lease_size(lims)
            if size > 0 and self.local.open_lease(expert) is None:
                got = db.grant_lease(self.session, expert, size, size * MIN_GRANT_SHARE,
                                     self._wire(lims, expert), self.cfg.lease_ttl_s)
                if got is not None:
                    self.local.add_lease(got, open_=True)
        self._lease_low.clear()

    def _stale(self, expert: str, cur: tuple[int, float, float, float], size: float,
               now: float) -> bool:
        """Renew a lease near its end, or one half spent when the fleet can top it up."""
        _, _, left, expires = cur
        if size <= 0 or expires - now < CLOCK_MARGIN_S + 2 * self.cfg.renew_s:
            return True
        fleet = self._fleet_left(expert, limits(self.caps, expert))
        return left < size / 2 and fleet is not None and fleet + left >= size * 0.75

    def _snapshot(self, db: FleetDb) -> None:
        scopes = ["all", f"device:{self.device_id}", *(f"expert:{e}" for e in self._experts)]
        day, _, counted = db.totals(scopes)
        with self._view.lock:
            self._view.day, self._view.counted = day, counted
            self._view.left_after.clear()
