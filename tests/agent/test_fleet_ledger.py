"""The fleet ledger against a real PostgreSQL server (tests/postgres.py): caps hold across
devices and threads, offline spending stays inside leases, the database's totals never
fall below what was spent, a frozen database never holds a reservation past its bound,
and a killed process's open rows are counted, then resolved."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from agent.errors import LedgerConfigError
from agent.fleet_db import FleetConfig, FleetDb
from agent.fleet_ledger import FleetLedger
from agent.fleet_schema import MIGRATIONS, migrate
from agent.ledger import BudgetExceededError, Caps, Ledger
from tests.conftest import REPO
from tests.postgres import PgServer


def fleet_ledger(url: str, data_dir: Path, device: str, caps: Caps, *, lease_usd: float = 0.01,
                 renew_s: float = 0.2, timeout_s: float = 1.0) -> FleetLedger:
    cfg = FleetConfig(dsn=url, device_id=device, lease_usd=lease_usd, renew_s=renew_s,
                      lease_ttl_s=600, statement_timeout_s=timeout_s)
    return FleetLedger(cfg, caps, ["cloud"], data_dir / device, holds_leases=True)


def wait_for(cond, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def rows(url: str, sql: str, args: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as c:
        return c.execute(sql, args).fetchall()


def counted_today(url: str) -> float:
    got = rows(url, "SELECT counted FROM edgeroute_totals WHERE scope='all' AND "
                    "period = to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD')")
    return float(got[0][0]) if got else 0.0


def set_reachable(server: PgServer, url: str, reachable: bool) -> None:
    """Take one database off the network and back, as an outage looks to a device: new
    connections refused, open ones cut (the server itself stays up for the others)."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(server.url(), autocommit=True) as c:
        c.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(reachable).lower()}')
        if not reachable:
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname=%s",
                      (name,))


def test_migrations_are_versioned(fleet_url: str) -> None:
    with psycopg.connect(fleet_url, autocommit=True) as c:
        with c.transaction():  # an old database: the first migration only
            c.execute("CREATE TABLE edgeroute_schema (version INTEGER NOT NULL)")
            c.execute("INSERT INTO edgeroute_schema VALUES (1)")
            c.execute(MIGRATIONS[0])
        assert migrate(c) == len(MIGRATIONS)
        assert c.execute("SELECT version FROM edgeroute_schema").fetchone()[0] == len(MIGRATIONS)
        assert c.execute("SELECT to_regclass('edgeroute_profiles')").fetchone()[0] is not None
        c.execute("UPDATE edgeroute_schema SET version = 99")
        with pytest.raises(LedgerConfigError, match="upgrade edgeroute"):
            migrate(c)


def test_threads_on_four_devices_never_pass_the_fleet_cap(fleet_url: str, tmp_path: Path):
    cap, worst = 0.2, 0.003
    ledgers = [fleet_ledger(fleet_url, tmp_path, f"dev{i}", Caps(daily_usd=cap),
                            lease_usd=0.01) for i in range(4)]
    for led in ledgers:
        assert led.wait_synced(15)
    won: list[tuple[FleetLedger, int]] = []
    lock = threading.Lock()

    def worker(led: FleetLedger) -> None:
        for _ in range(30):
            try:
                row = led.reserve("cloud", worst)
            except BudgetExceededError as exc:
                assert "budget" in exc.message
                continue
            with lock:
                won.append((led, row))

    threads = [threading.Thread(target=worker, args=(led,)) for led in ledgers for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) * worst <= cap + 1e-12
    assert any(row < 0 for _, row in won), "some calls should be paid from leases"
    for led, row in won:
        led.settle(row, worst, 10, 10)
    for led in ledgers:
        assert led.wait_synced(15)
        led.close()  # returns the unspent part of its lease
    settled = rows(fleet_url, "SELECT COUNT(*), SUM(settled_usd) FROM edgeroute_spend "
                              "WHERE kind='call' AND state='settled'")[0]
    assert settled[0] == len(won) and float(settled[1]) <= cap
    assert len(won) >= int(cap / worst) - 4, "leases must not strand the budget"
    assert rows(fleet_url, "SELECT COUNT(*) FROM edgeroute_spend WHERE state='reserved'") == [(0,)]
    assert counted_today(fleet_url) == pytest.approx(float(settled[1]), abs=1e-12)
    assert rows(fleet_url, "SELECT * FROM edgeroute_totals_drift()") == []


class FleetMachine(RuleBasedStateMachine):
    """Two devices, outages at any moment: what was really spent (settled + still open)
    never passes the cap, and the database never counts less than that."""

    server: PgServer
    root: Path
    CAP = 0.03

    def __init__(self) -> None:
        super().__init__()
        self.url = self.server.create_database()
        data = self.root / self.url.rsplit("/", 1)[1]
        self.ledgers = [fleet_ledger(self.url, data, f"d{i}", Caps(daily_usd=self.CAP),
                                     lease_usd=0.006) for i in range(2)]
        for led in self.ledgers:
            assert led.wait_synced(15)
        self.open: dict[tuple[int, int], float] = {}
        self.settled = 0.0
        self.online = True

    @rule(dev=st.integers(0, 1), usd=st.floats(0.0005, 0.008))
    def reserve(self, dev: int, usd: float) -> None:
        try:
            row = self.ledgers[dev].reserve("cloud", usd)
        except BudgetExceededError:
            return
        self.open[(dev, row)] = usd

    @precondition(lambda self: self.open)
    @rule(data=st.data(), frac=st.floats(0, 1))
    def settle(self, data: st.DataObject, frac: float) -> None:
        key = data.draw(st.sampled_from(sorted(self.open)))
        usd = self.open.pop(key) * frac
        self.ledgers[key[0]].settle(key[1], usd, 1, 1)
        self.settled += usd

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.open)))
        del self.open[key]
        self.ledgers[key[0]].release(key[1])

    @rule()
    def outage(self) -> None:
        set_reachable(self.server, self.url, not self.online)
        self.online = not self.online

    @precondition(lambda self: self.online)
    @rule(dev=st.integers(0, 1))
    def sync(self, dev: int) -> None:
        assert self.ledgers[dev].wait_synced(15)

    @invariant()
    def never_past_the_cap(self) -> None:
        spent = self.settled + sum(self.open.values())
        assert spent <= self.CAP + 1e-9
        if self.online:
            assert counted_today(self.url) >= spent - 1e-9

    def teardown(self) -> None:
        if not self.online:
            set_reachable(self.server, self.url, True)
        for dev, row in list(self.open):
            self.ledgers[dev].release(row)
        for led in self.ledgers:
            assert led.wait_synced(15)
            led.close()
        assert rows(self.url, "SELECT COUNT(*) FROM edgeroute_spend WHERE state='reserved'") \
            == [(0,)]
        assert counted_today(self.url) == pytest.approx(self.settled, abs=1e-9)
        assert rows(self.url, "SELECT * FROM edgeroute_totals_drift()") == []


@pytest.mark.slow
def test_outages_at_any_moment_never_overspend(postgres: PgServer, tmp_path: Path) -> None:
    machine = type("Machine", (FleetMachine,), {"server": postgres, "root": tmp_path})
    run_state_machine_as_test(machine, settings=hsettings(
        max_examples=8, stateful_step_count=25, deadline=None))


def test_a_frozen_database_never_holds_a_reservation_past_its_bound(
        postgres: PgServer, fleet_url: str, tmp_path: Path) -> None:
    """SIGSTOP the whole server (a hung host: connections open, nothing answers)."""
    led = fleet_ledger(fleet_url, tmp_path, "dev", Caps(daily_usd=1.0), timeout_s=1.0)
    wait_for(lambda: led.gauges().lease_usd.get("cloud", 0) > 0)
    pids = postgres.postmaster_pids()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        t = time.monotonic()
        first = led.reserve("cloud", 0.001)
        waited = time.monotonic() - t
        t = time.monotonic()
        second = led.reserve("cloud", 0.001)
        again = time.monotonic() - t
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert waited < 1.5 and again < 0.2, (waited, again)
    assert first < 0 and second < 0  # both paid from the lease
    led.settle(first, 0.001, 1, 1)
    led.release(second)
    assert led.wait_synced(30)
    led.close()
    assert rows(fleet_url, "SELECT COUNT(*) FROM edgeroute_spend WHERE state='reserved'") == [(0,)]
    assert counted_today(fleet_url) == pytest.approx(0.001, abs=1e-12)


CRASH = """
import os, signal, sys, time
from pathlib import Path
from agent.fleet_db import FleetConfig
from agent.fleet_ledger import FleetLedger
from agent.ledger import Caps
cfg = FleetConfig(dsn=sys.argv[1], device_id="dev", lease_usd=0.01, renew_s=0.2,
                  lease_ttl_s=600, statement_timeout_s=5.0)
led = FleetLedger(cfg, Caps(daily_usd=1.0), ["cloud"], Path(sys.argv[2]), holds_leases=True)
# Online and holding a lease: the lease is recorded inside the first sync, before that
# sync marks the ledger online, so a lease alone does not mean the next call goes to the
# database.
while not (led.gauges().online and led.gauges().lease_usd.get("cloud", 0) > 0):
    time.sleep(0.05)
print(led.reserve("cloud", 0.004), flush=True)       # fleet-funded
sys.stdin.readline()                                 # the parent cuts the database off
print(led.reserve("cloud", 0.003), flush=True)       # paid from the lease, on disk only
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_process_leaves_counted_rows_that_a_restart_resolves(
        postgres: PgServer, fleet_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CRASH, fleet_url, str(tmp_path / "dev")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    fleet_row = int(proc.stdout.readline())
    set_reachable(postgres, fleet_url, False)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    local_row = int(proc.stdout.readline())
    assert proc.wait(30) == -signal.SIGKILL
    set_reachable(postgres, fleet_url, True)
    assert fleet_row > 0 and local_row < 0
    # Counted while nobody resolves it: the fleet call at its reservation, the lease-paid
    # call inside its lease (0.01 held in full).
    assert rows(fleet_url, "SELECT state FROM edgeroute_spend WHERE id=%s", (fleet_row,)) \
        == [("reserved",)]
    assert counted_today(fleet_url) == pytest.approx(0.004 + 0.01, abs=1e-12)
    led = fleet_ledger(fleet_url, tmp_path, "dev", Caps(daily_usd=1.0))
    wait_for(lambda: rows(fleet_url, "SELECT COUNT(*) FROM edgeroute_spend WHERE kind='call' "
                                     "AND state='settled' AND estimated") == [(2,)])
    assert led.wait_synced(15)
    led.close()
    assert rows(fleet_url, "SELECT COUNT(*) FROM edgeroute_spend WHERE state='reserved'") == [(0,)]
    assert counted_today(fleet_url) == pytest.approx(0.004 + 0.003, abs=1e-12)


def test_usage_fleet_lists_devices_and_experts(fleet_url: str, tmp_path: Path) -> None:
    for dev, usd in (("kiosk-a", 0.002), ("kiosk-b", 0.005)):
        led = fleet_ledger(fleet_url, tmp_path, dev, Caps(daily_usd=1.0))
        assert led.wait_synced(15)
        led.settle(led.reserve("cloud", usd), usd, 10, 5)
        assert led.wait_synced(15)
        led.close()
    cred = tmp_path / "creds"
    cred.mkdir()
    (cred / "ledger.url").write_text(fleet_url + "\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CREDENTIALS_DIRECTORY": str(cred),
           "EDGEROUTE_LEDGER__URL_FILE": "ledger.url", "EDGEROUTE_BUDGET__DAILY_USD": "1"}
    cmd = [sys.executable, "-m", "agent", "usage", "--fleet"]
    r = subprocess.run([*cmd, "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    usage = json.loads(r.stdout)
    assert usage["devices"]["kiosk-a"]["experts"]["cloud"]["day_usd"] == pytest.approx(0.002)
    assert usage["devices"]["kiosk-b"]["experts"]["cloud"]["settled_calls"] == 1
    assert usage["total"]["day_usd"] == pytest.approx(0.007)
    text = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert text.returncode == 0 and "kiosk-a" in text.stdout and "kiosk-b" in text.stdout
    own = subprocess.run([sys.executable, "-m", "agent", "usage", "--json"], capture_output=True,
                         text=True, env={**env, "EDGEROUTE_LEDGER__DEVICE_ID": "kiosk-b",
                                         "EDGEROUTE_PATHS__DATA_DIR": str(tmp_path / "kiosk-b")},
                         timeout=60)
    assert own.returncode == 0, own.stderr
    assert set(json.loads(own.stdout)["devices"]) == {"kiosk-b"}  # this device's rows only
    down = {**env, "EDGEROUTE_LEDGER__URL_FILE": "",
            "EDGEROUTE_LEDGER__URL": "postgresql://nobody@127.0.0.1:1/none"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=down, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "fleet ledger unavailable" in r.stderr


def test_bad_ledger_settings_are_one_line_errors(tmp_path: Path) -> None:
    from agent.settings import Settings

    with pytest.raises(LedgerConfigError, match="postgresql:// URL"):
        FleetConfig.from_settings(Settings(ledger={"url": "mysql://x"}))
    with pytest.raises(LedgerConfigError, match="cannot read ledger.url_file"):
        FleetConfig.from_settings(Settings(ledger={"url_file": tmp_path / "missing"}))
    cfg = FleetConfig.from_settings(Settings(ledger={"url": "postgresql://h/db"}))
    assert cfg is not None and cfg.device_id == Path("/etc/machine-id").read_text().strip()
    assert "postgresql" not in repr(cfg)  # the URL may hold a password
    assert FleetConfig.from_settings(Settings()) is None
    db = FleetDb(FleetConfig(dsn="postgresql://nobody@127.0.0.1:1/x", device_id="d"))
    with pytest.raises(Exception, match="fleet ledger unavailable"):
        db.ping()


def test_device_caps_on_a_lone_device(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite3", Caps(device_daily_usd=0.01))
    ledger.reserve("gpt", 0.006)
    with pytest.raises(BudgetExceededError, match="device daily budget"):
        ledger.reserve("gpt", 0.006)
