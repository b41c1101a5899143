"""A fleet of real daemons on one PostgreSQL ledger (tests/agent/fleet_daemons.py): four
``edgeroute serve`` processes, each its own data dir and device id, a fleet daily cap of
$0.05 and the loopback llama.cpp server as the cloud expert, priced so that 34 calls
exhaust the cap.

- 200 concurrent requests over the four: settled spend <= cap, every client answered,
  nobody hangs, the rows and each device's counters add up;
- the database stopped for ``EDGEROUTE_TEST_OUTAGE_S`` (30 s, the test of record) in the
  middle of a run: devices answer from the cloud within their leases, then locally; spend
  <= cap after it returns; every reservation settled or released;
- a daemon killed with SIGKILL mid-call: its reservations stay counted, and are resolved
  when it restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.agent.fleet_daemons import WORST_USD, Daemon, fleet, fleet_env, start_daemon
from tests.conftest import wait_http
from tests.postgres import PgServer

CAP = 0.05
BODY = {"model": "cloud", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
        "temperature": 0}
OUTAGE_S = float(os.environ.get("EDGEROUTE_TEST_OUTAGE_S", "30"))

pytestmark = pytest.mark.slow


def q(url: str, sql: str, args: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as c:
        return c.execute(sql, args).fetchall()


def settled_calls(url: str) -> tuple[int, float]:
    n, usd = q(url, "SELECT COUNT(*), COALESCE(SUM(settled_usd), 0) FROM edgeroute_spend "
                    "WHERE kind='call' AND state='settled'")[0]
    return int(n), float(usd)


def open_rows(url: str, kind: str) -> int:
    return int(q(url, "SELECT COUNT(*) FROM edgeroute_spend WHERE kind=%s AND "
                      "state='reserved'", (kind,))[0][0])


def check_books(url: str, cloud_answers: int) -> float:
    """Every call a client saw answered by the cloud is one settled row; none is open;
    the spend is within the cap; the totals are the rows' sums."""
    n, usd = settled_calls(url)
    assert n == cloud_answers
    assert usd <= CAP
    assert open_rows(url, "call") == 0
    assert q(url, "SELECT * FROM edgeroute_totals_drift()") == []
    return usd


async def _fire(daemons: list[Daemon], n: int) -> list[tuple[int, dict, float]]:
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=n)) as c:
        async def one(i: int) -> tuple[int, dict, float]:
            t = time.monotonic()
            r = await c.post(f"{daemons[i % len(daemons)].url}/predict", json=BODY)
            return r.status_code, r.json(), time.monotonic() - t
        return await asyncio.gather(*(one(i) for i in range(n)))


def test_200_concurrent_requests_over_4_daemons_never_pass_the_fleet_cap(
        tmp_path: Path, fleet_url: str, smollm_gguf: Path, cloud_server: str) -> None:
    with fleet(tmp_path, fleet_url, smollm_gguf, cloud_server, 4,
               budget__daily_usd=str(CAP), ledger__lease_usd="0.004") as daemons:
        for d in daemons:  # each holds its lease before the load
            d.wait_synced()
        t = time.monotonic()
        replies = asyncio.run(_fire(daemons, 200))
        wall = time.monotonic() - t
        assert {code for code, _, _ in replies} == {200}, [b for c, b, _ in replies if c != 200]
        experts = [body["expert"] for _, body, _ in replies]
        cloud = experts.count("cloud")
        reasons = {b["routing"]["reason"][:80] for _, b, _ in replies if b["expert"] == "local"}
        assert 0 < cloud < 200 and experts.count("local") == 200 - cloud, reasons
        assert all(b["routing"]["fallback_from"] == "cloud" for _, b, _ in replies
                   if b["expert"] == "local")
        for d in daemons:
            d.wait_synced()
        spent = check_books(fleet_url, cloud)
        per_device = dict(q(fleet_url, "SELECT device_id, SUM(settled_usd) FROM edgeroute_spend "
                                       "WHERE kind='call' AND state='settled' GROUP BY 1"))
        for d in daemons:  # each device's counter is what it settled: the fleet's add up
            counted = d.metric('edgeroute_spend_usd_total{expert="cloud"}') or 0.0
            assert counted == pytest.approx(float(per_device.get(d.device, 0)), abs=1e-9)
            assert d.metric("edgeroute_fleet_budget_left_usd") is not None
            assert d.metric("edgeroute_lease_usd") is not None
    assert open_rows(fleet_url, "lease") == 0  # a stopped daemon returns its lease
    paid = q(fleet_url, "SELECT COUNT(*) FROM edgeroute_spend WHERE lease_id IS NOT NULL")[0][0]
    print(f"\n4 daemons, 200 requests in {wall:.1f} s (slowest {max(r[2] for r in replies):.1f}"
          f" s): {cloud} cloud answers, settled ${spent:.6f} of the ${CAP} cap "
          f"({spent / CAP:.1%}); lease-paid calls {paid}")
    # Leases do not strand the budget: at most a call's worst case per device is left over.
    assert spent >= CAP - 4 * WORST_USD - 4 * 0.004 * 0.1


@dataclass
class Reply:
    device: str
    sent: float
    done: float
    status: int
    expert: str | None


def _pace(d: Daemon, stop: threading.Event, out: list[Reply], lock: threading.Lock,
          every_s: float) -> None:
    with httpx.Client(timeout=120) as c:
        while not stop.is_set():
            t = time.monotonic()
            r = c.post(f"{d.url}/predict", json=BODY)
            got = Reply(d.device, t, time.monotonic(), r.status_code,
                        r.json().get("expert") if r.status_code == 200 else None)
            with lock:
                out.append(got)
            stop.wait(max(0.0, every_s - (time.monotonic() - t)))


def test_the_database_stopped_mid_run_keeps_devices_answering_within_their_leases(
        tmp_path: Path, postgres: PgServer, fleet_url: str, smollm_gguf: Path,
        cloud_server: str) -> None:
    lease = 0.006  # four calls' worst case: 4 x 0.00146 = 0.00584
    replies: list[Reply] = []
    lock, stop = threading.Lock(), threading.Event()
    with fleet(tmp_path, fleet_url, smollm_gguf, cloud_server, 4,
               budget__daily_usd=str(CAP), ledger__lease_usd=str(lease)) as daemons:
        for d in daemons:
            d.wait_synced()
        threads = [threading.Thread(target=_pace, args=(d, stop, replies, lock, 1.5))
                   for d in daemons]
        for t in threads:
            t.start()
        try:
            time.sleep(4.5)
            down = time.monotonic()
            postgres.stop("fast")
            time.sleep(OUTAGE_S)
            up = time.monotonic()
            postgres.start()
            time.sleep(8)
        finally:
            stop.set()
            for t in threads:
                t.join(180)
            if not postgres.data.joinpath("postmaster.pid").exists():
                postgres.start()
        for d in daemons:
            d.wait_synced()
        assert {r.status for r in replies} == {200}
        assert max(r.done - r.sent for r in replies) < 20  # nobody hangs on the database
        cloud = sum(r.expert == "cloud" for r in replies)
        spent = check_books(fleet_url, cloud)
        outage = [r for r in replies if r.sent > down + 0.5 and r.done < up]
        by_dev = {d.device: [r.expert for r in sorted(outage, key=lambda r: r.sent)
                             if r.device == d.device] for d in daemons}
        for dev, seq in by_dev.items():
            n_cloud = seq.count("cloud")
            assert n_cloud <= int(lease / WORST_USD), (dev, seq)  # never past its lease
            assert seq == ["cloud"] * n_cloud + ["local"] * (len(seq) - n_cloud), (dev, seq)
            assert seq.count("local") > 0, (dev, seq)  # the lease ran out: local answers
        outage_cloud = sum(s.count("cloud") for s in by_dev.values())
        assert outage_cloud > 0
        paid = q(fleet_url, "SELECT COUNT(*) FROM edgeroute_spend WHERE lease_id IS NOT NULL "
                            "AND state='settled'")[0][0]
        assert paid >= outage_cloud  # the offline calls reached the database
    assert open_rows(fleet_url, "lease") == 0 and open_rows(fleet_url, "call") == 0
    print(f"\noutage {OUTAGE_S:.0f} s: {len(replies)} requests, {cloud} cloud answers "
          f"({outage_cloud} offline from leases, per device "
          f"{ {k: v.count('cloud') for k, v in by_dev.items()} }), {len(outage)} during the "
          f"outage; settled ${spent:.6f} of ${CAP} ({spent / CAP:.1%}); slowest "
          f"{max(r.done - r.sent for r in replies):.1f} s")


def test_a_daemon_killed_mid_call_leaves_counted_reservations_resolved_on_restart(
        tmp_path: Path, fleet_url: str, smollm_gguf: Path, cloud_server: str) -> None:
    env = fleet_env(tmp_path, "dev0", fleet_url, smollm_gguf, cloud_server,
                    budget__daily_usd="1", ledger__lease_usd="0.004")
    d = start_daemon("dev0", env)
    wait_http(f"{d.url}/health", timeout=180, proc=d.proc)
    d.wait_synced()
    body = {**BODY, "max_tokens": 48}

    def call() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the daemon is killed under it
            httpx.post(f"{d.url}/predict", json=body, timeout=60)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while open_rows(fleet_url, "call") < 2:
        assert time.monotonic() < deadline, "no calls in flight"
        time.sleep(0.01)
    d.stop(signal.SIGKILL)
    for t in threads:
        t.join(60)
    orphans = q(fleet_url, "SELECT id, reserved_usd FROM edgeroute_spend WHERE kind='call' "
                           "AND state='reserved'")
    assert orphans
    counted = float(q(fleet_url, "SELECT counted FROM edgeroute_totals WHERE scope='all' "
                                 "AND length(period) = 10")[0][0])
    n, usd = settled_calls(fleet_url)
    assert counted >= usd + sum(float(r) for _, r in orphans)  # still counted after the kill
    d = start_daemon("dev0", env)
    try:
        wait_http(f"{d.url}/health", timeout=180, proc=d.proc)
        deadline = time.monotonic() + 60
        while open_rows(fleet_url, "call"):
            assert time.monotonic() < deadline, "the restart did not resolve the orphans"
            time.sleep(0.1)
        for row_id, reserved in orphans:
            assert q(fleet_url, "SELECT state, settled_usd, estimated FROM edgeroute_spend "
                                "WHERE id=%s", (row_id,)) == [("settled", reserved, True)]
        assert q(fleet_url, "SELECT * FROM edgeroute_totals_drift()") == []
    finally:
        d.stop()
    print(f"\nSIGKILL with {len(orphans)} call(s) in flight: counted, then settled at their "
          "worst case by the restarted daemon")
