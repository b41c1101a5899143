"""The dashboard's figures without a browser or a model: spend against each cap from a
real SQLite ledger and a real fleet ledger (PostgreSQL), the latency quantiles from real
Prometheus histograms."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram

from agent.dashboard import _histograms, _quantile, spend_view
from agent.ledger import Caps, Ledger
from tests.agent.test_fleet_ledger import fleet_ledger, set_reachable
from tests.postgres import PgServer


def test_a_lone_ledgers_spend_against_every_cap(tmp_path: Path) -> None:
    caps = Caps(daily_usd=1.0, monthly_usd=10.0, expert_daily_usd={"cloud": 0.5},
                device_daily_usd=0.8)
    led = Ledger(tmp_path / "ledger.sqlite3", caps)
    try:
        led.settle(led.reserve("cloud", 0.05), 0.01, 100, 10)
        led.reserve("cloud", 0.02)  # still open: it counts at its reservation
        led.settle(led.reserve("other", 0.01), 0.004, 10, 1)
        view = spend_view(led, ["cloud", "idle"])
    finally:
        led.close()
    assert view["ledger"] == "device" and view["fleet"] is None and view["error"] is None
    assert view["experts"]["cloud"] == {"day_usd": pytest.approx(0.03),
                                        "month_usd": pytest.approx(0.03),
                                        "settled_calls": 1, "open_reservations": 1}
    assert view["experts"]["idle"]["day_usd"] == 0.0  # configured, nothing spent yet
    assert view["open_reservations"] == 1
    assert view["total_day_usd"] == pytest.approx(0.034)
    caps_by = {c["label"]: c for c in view["caps"]}
    assert list(caps_by) == ["daily", "monthly", "device daily", "cloud daily"]
    assert caps_by["daily"]["left_usd"] == pytest.approx(1.0 - 0.034)
    assert caps_by["cloud daily"]["spent_usd"] == pytest.approx(0.03)
    assert caps_by["cloud daily"]["scope"] == "expert"
    assert caps_by["device daily"]["spent_usd"] == pytest.approx(0.034)


def test_a_fleet_ledgers_spend_leases_and_an_outage(postgres: PgServer, fleet_url: str,
                                                     tmp_path: Path) -> None:
    led = fleet_ledger(fleet_url, tmp_path, "kiosk-a", Caps(daily_usd=1.0,
                                                            device_daily_usd=0.5))
    try:
        assert led.wait_synced(15)
        led.settle(led.reserve("cloud", 0.002), 0.002, 10, 5)
        assert led.wait_synced(15)
        view = spend_view(led, ["cloud"], "kiosk-a")
        assert view["ledger"] == "fleet" and view["error"] is None
        assert view["experts"]["cloud"]["day_usd"] == pytest.approx(0.002)
        fleet = view["fleet"]
        assert fleet["device_id"] == "kiosk-a" and fleet["online"] is True
        assert fleet["leased_usd"]["cloud"] > 0  # the device's lease, held in the database
        assert 0 < fleet["lease_usd"]["cloud"] <= fleet["leased_usd"]["cloud"]
        assert fleet["fleet_left_usd"]["cloud"] <= 1.0 - 0.002
        caps_by = {c["label"]: c for c in view["caps"]}
        assert caps_by["daily"]["spent_usd"] is None  # every device's: the fleet's figure
        assert caps_by["device daily"]["spent_usd"] >= 0.002  # calls plus the lease held
        set_reachable(postgres, fleet_url, False)
        down = spend_view(led, ["cloud"], "kiosk-a")
        assert down["error"] and "unavailable" in down["error"].lower()
        assert all(c["spent_usd"] is None for c in down["caps"])
        assert down["fleet"]["lease_usd"]["cloud"] > 0  # what it may still spend offline
    finally:
        set_reachable(postgres, fleet_url, True)
        led.close()


def test_latency_quantiles_follow_the_histogram_buckets() -> None:
    h = Histogram("t_seconds", "t", ["expert"], buckets=(0.1, 1, 10),
                  registry=CollectorRegistry())
    for v in (0.05, 0.05, 0.5, 5.0):
        h.labels("a").observe(v)
    view = _histograms(h)["a"]
    assert view["count"] == 4 and view["mean_s"] == pytest.approx(5.6 / 4)
    assert view["p50_s"] == pytest.approx(0.1)  # rank 2 of 4: the top of the first bucket
    assert view["p95_s"] == pytest.approx(1 + 9 * 0.8)
    assert _quantile(0.5, [(1.0, 0.0)], 0) is None
    assert _quantile(0.99, [(1.0, 1.0), (float("inf"), 5.0)], 5) == 1.0
