"""The spend ledger never lets counted spend pass a cap, under any order of operations,
under threads, and across reopen."""

from __future__ import annotations

import sqlite3
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agent.ledger import SCHEMA, BudgetExceededError, Caps, Ledger

CAP = 1.0


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "l.sqlite3"
        self.ledger = Ledger(self.path, Caps(daily_usd=CAP, expert_daily_usd={"b": 0.4}))
        self.open: dict[int, float] = {}
        self.settled: dict[int, float] = {}

    @rule(expert=st.sampled_from(["a", "b"]), usd=st.floats(0, 0.6))
    def reserve(self, expert: str, usd: float) -> None:
        try:
            row = self.ledger.reserve(expert, usd)
        except BudgetExceededError as exc:
            assert "budget" in exc.message
            return
        self.open[row] = usd

    @precondition(lambda self: self.open)
    @rule(data=st.data(), frac=st.floats(0, 1))
    def settle(self, data, frac: float) -> None:
        row = data.draw(st.sampled_from(sorted(self.open)))
        reserved = self.open.pop(row)
        self.ledger.settle(row, reserved * frac, 10, 10)
        self.settled[row] = reserved * frac

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def release(self, data) -> None:
        row = data.draw(st.sampled_from(sorted(self.open)))
        del self.open[row]
        self.ledger.release(row)

    @rule()
    def reopen(self) -> None:
        self.ledger.close()
        self.ledger = Ledger(self.path, self.ledger.caps)

    @invariant()
    def spend_within_cap(self) -> None:
        usage = self.ledger.usage()
        counted = sum(self.open.values()) + sum(self.settled.values())
        assert usage["total"]["day_usd"] == pytest.approx(counted, abs=1e-9)
        assert usage["total"]["day_usd"] <= CAP + 1e-9
        b = usage["experts"].get("b", {"day_usd": 0.0})["day_usd"]
        assert b <= 0.4 + 1e-9

    def teardown(self) -> None:
        self.ledger.close()
        self.dir.cleanup()


TestLedgerStateful = LedgerMachine.TestCase
TestLedgerStateful.settings = hsettings(max_examples=40, stateful_step_count=30, deadline=None)


def test_concurrent_reservations_never_pass_the_cap(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite3", Caps(daily_usd=1.0))
    won: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(20):
            try:
                row = ledger.reserve("cloud", 0.03)
            except BudgetExceededError:
                continue
            with lock:
                won.append(row)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 33  # floor(1.0 / 0.03)
    assert ledger.usage()["total"]["day_usd"] <= 1.0


def test_wal_and_full_sync_and_migrations(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite3", Caps())
    # synchronous is per connection: only the ledger's own can say it fsyncs every commit.
    assert ledger.durability() == ("wal", 2)  # 2 = FULL
    ledger.close()
    db = sqlite3.connect(tmp_path / "l.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(SCHEMA)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_migration_adds_estimated_to_an_old_ledger(tmp_path: Path) -> None:
    """A ledger written before the ``estimated`` column keeps its rows and gains it."""
    path = tmp_path / "l.sqlite3"
    old = sqlite3.connect(path, isolation_level=None)
    for i, stmt in enumerate(SCHEMA[:3]):
        old.execute(stmt)
        old.execute(f"PRAGMA user_version={i + 1}")
    old.execute("INSERT INTO spend (ts, day, month, expert, state, reserved_usd) "
                "VALUES (1, '1970-01-01', '1970-01', 'gpt', 'reserved', 0.5)")
    old.close()
    ledger = Ledger(path, Caps())
    row = ledger.reserve("gpt", 0.1)
    ledger.settle(row, 0.05, 100, 7, estimated=True)
    ledger.close()
    db = sqlite3.connect(path)
    rows = db.execute("SELECT expert, state, estimated FROM spend ORDER BY id").fetchall()
    assert rows == [("gpt", "reserved", 0), ("gpt", "settled", 1)]


def test_refusal_names_the_cap(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite3", Caps(monthly_usd=0.01))
    with pytest.raises(BudgetExceededError, match="monthly budget"):
        ledger.reserve("gpt-4o", 0.02)
