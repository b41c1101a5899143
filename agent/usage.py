"""``edgeroute usage``: cloud spend per expert for today and this month, from the ledger."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from agent.runtime import open_ledger
    from agent.settings import load_settings

    settings = load_settings()
    usage: dict[str, Any]
    ledger = open_ledger(settings)
    try:
        usage = ledger.usage()
    finally:
        ledger.close()
    if args.json:
        print(json.dumps(usage, indent=2))
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
