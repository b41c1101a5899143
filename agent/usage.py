"""``edgeroute usage``: cloud spend per expert for today and this month, from the ledger;
``--fleet``: every device of a fleet ledger, per device and expert, with their leases."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--fleet", action="store_true",
                        help="every device of the fleet ledger (needs ledger.url)")


def run(args: argparse.Namespace) -> int:
    from agent.settings import load_settings

    settings = load_settings()
    if args.fleet:
        return _fleet(settings, args.json)
    from agent.runtime import open_ledger

    usage: dict[str, Any]
    ledger = open_ledger(settings)
    try:
        usage = ledger.usage()
    finally:
        ledger.close()
    if args.json:
        print(json.dumps(usage, indent=2))
        return 0
    if "devices" in usage:  # a fleet ledger: this device's rows
        from agent.fleet_usage import render

        print(render(usage))
        return 0
    caps = usage["caps"]
    print(f"cloud spend, day {usage['day']} / month {usage['month']} (USD)")
    print(f"  {'expert':<24} {'today':>12} {'month':>12} {'calls':>7} {'open':>5}")
    for name, row in usage["experts"].items():
        print(f"  {name:<24} {row['day_usd']:>12.6f} {row['month_usd']:>12.6f} "
              f"{row['settled_calls']:>7} {row['open_reservations']:>5}")
    total = usage["total"]
    print(f"  {'total':<24} {total['day_usd']:>12.6f} {total['month_usd']:>12.6f}")
    print(f"  caps: daily {caps['daily_usd']}, monthly {caps['monthly_usd']}")
    return 0


def _fleet(settings: Any, as_json: bool) -> int:
    """Straight from the database: no lease, no session, nothing written."""
    from agent.cli import CliError
    from agent.fleet_db import FleetConfig, FleetDb
    from agent.fleet_usage import render

    cfg = FleetConfig.from_settings(settings)
    if cfg is None:
        raise CliError("--fleet needs a fleet ledger: set EDGEROUTE_LEDGER__URL (or "
                       "__URL_FILE)")
    db = FleetDb(cfg)
    try:
        usage = db.usage(None)
    finally:
        db.close()
    b = settings.budget
    usage["caps"] = {"daily_usd": b.daily_usd, "monthly_usd": b.monthly_usd,
                     "expert_daily_usd": b.expert_daily_usd,
                     "expert_monthly_usd": b.expert_monthly_usd}
    print(json.dumps(usage, indent=2) if as_json else render(usage))
    return 0
