"""The fleet's spend as ``edgeroute usage --fleet`` shows it: per device and expert, today
and this month (by the database's clock), the leases each device holds, and the totals
every cap is checked against (calls plus outstanding leases)."""

from __future__ import annotations

from typing import Any

CALLS_SQL = """
SELECT device_id, expert,
       COALESCE(SUM(edgeroute_counted(s)) FILTER (WHERE day = %(day)s), 0),
       COALESCE(SUM(edgeroute_counted(s)), 0),
       COUNT(*) FILTER (WHERE state = 'settled'),
       COUNT(*) FILTER (WHERE state = 'reserved')
FROM edgeroute_spend s
WHERE month = %(month)s AND kind = 'call' AND (%(device)s::text IS NULL OR device_id = %(device)s)
GROUP BY device_id, expert ORDER BY device_id, expert
"""
LEASES_SQL = """
SELECT device_id, expert, COALESCE(SUM(edgeroute_counted(s)), 0), COUNT(*)
FROM edgeroute_spend s
WHERE kind = 'lease' AND state = 'reserved' AND (%(device)s::text IS NULL OR device_id = %(device)s)
GROUP BY device_id, expert ORDER BY device_id, expert
"""


def usage_query(conn: Any, device: str | None) -> dict[str, Any]:
    """One device's spend (``device``), or every device's (None)."""
    day, month = conn.execute(
        "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD'), "
        "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM')").fetchone()
    args = {"day": day, "month": month, "device": device}
    devices: dict[str, Any] = {}
    for dev, expert, d, m, settled, open_ in conn.execute(CALLS_SQL, args).fetchall():
        entry = devices.setdefault(dev, {"experts": {}, "leases": {}})
        entry["experts"][expert] = {"day_usd": float(d), "month_usd": float(m),
                                    "settled_calls": int(settled),
                                    "open_reservations": int(open_)}
    for dev, expert, held, n in conn.execute(LEASES_SQL, args).fetchall():
        entry = devices.setdefault(dev, {"experts": {}, "leases": {}})
        entry["leases"][expert] = {"held_usd": float(held), "leases": int(n)}
    scope = "all" if device is None else f"device:{device}"
    totals = dict(conn.execute(
        "SELECT period, counted FROM edgeroute_totals WHERE scope = %s AND period IN (%s, %s)",
        (scope, day, month)).fetchall())
    return {"day": day, "month": month, "devices": devices,
            "total": {"day_usd": float(totals.get(day, 0)),
                      "month_usd": float(totals.get(month, 0))}}


def render(usage: dict[str, Any]) -> str:
    """The table ``edgeroute usage --fleet`` prints."""
    lines = [f"fleet cloud spend, day {usage['day']} / month {usage['month']} (USD)",
             f"  {'device':<20} {'expert':<20} {'today':>11} {'month':>11} {'calls':>6} "
             f"{'open':>5} {'leased':>9}"]
    for dev, entry in usage["devices"].items():
        for expert in sorted(set(entry["experts"]) | set(entry["leases"])):
            row = entry["experts"].get(expert, {"day_usd": 0.0, "month_usd": 0.0,
                                                "settled_calls": 0, "open_reservations": 0})
            held = entry["leases"].get(expert, {}).get("held_usd", 0.0)
            lines.append(f"  {dev[:20]:<20} {expert[:20]:<20} {row['day_usd']:>11.6f} "
                         f"{row['month_usd']:>11.6f} {row['settled_calls']:>6} "
                         f"{row['open_reservations']:>5} {held:>9.6f}")
    total = usage["total"]
    lines.append(f"  {'counted against the caps (calls + leases)':<41} "
                 f"{total['day_usd']:>11.6f} {total['month_usd']:>11.6f}")
    caps = usage.get("caps") or {}
    lines.append(f"  caps: daily {caps.get('daily_usd')}, monthly {caps.get('monthly_usd')}")
    return "\n".join(lines)
