"""The daemon's own dashboard: the page at ``GET /`` (and ``/ui``) and the JSON it reads,
``GET /v1/dashboard``, built here from what the runtime already holds.

Everything the page shows is already known to the daemon but spread over ``/health``,
``/metrics`` and the ledger: the experts (prices, profiles, breakers, shares, predicted
accuracy per dataset family), the spend against each cap, the traffic and the recent
decisions. This module reads them (the same code ``/health`` uses) and changes nothing;
the page's only writes are the "try a query" box's ``POST /v1/route`` and
``POST /v1/chat/completions``, guarded like any client's (``agent.http_security``).

The page is three static files in ``agent/assets/ui`` (no build step, no CDN, no
framework: the device may be offline). They hold no figures, so they are served without
the bearer token; the JSON needs it, and the page asks for it.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from agent.dashboard_schema import DashboardView
from agent.errors import AgentError
from agent.ledger import Limit, SpendLedger, limits
from agent.runtime import Runtime
from agent.schemas import ERROR_RESPONSES

# path -> (file in agent/assets/ui, media type); served without the bearer token.
PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/ui": ("index.html", "text/html; charset=utf-8"),
    "/ui/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/ui/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
PAGE_PATHS = frozenset(PAGE_FILES)
# The page loads only its own files and talks only to its own origin; no frame may hold it
# (a framed page's "answer" button could be clicked for the user).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
RECENT = 200  # router decisions the shares are taken over (as /health)
BUCKETS = 30  # traffic chart columns


def _counter(metric: Any) -> dict[tuple[str, ...], float]:
    """A labelled Prometheus counter's values, by label values."""
    out: dict[tuple[str, ...], float] = {}
    for family in metric.collect():
        for s in family.samples:
            if s.name.endswith("_total"):
                out[tuple(s.labels.values())] = s.value
    return out


def _by_label(metric: Any) -> dict[str, int]:
    return {k[0]: int(v) for k, v in _counter(metric).items()}


def _quantile(q: float, bounds: list[tuple[float, float]], count: float) -> float | None:
    """Prometheus' ``histogram_quantile``: linear inside the bucket that holds the rank;
    the largest finite bound when the rank falls in ``+Inf``."""
    if count <= 0:
        return None
    rank, lower, below = q * count, 0.0, 0.0
    for upper, cumulative in bounds:
        if cumulative >= rank:
            if math.isinf(upper):
                return lower
            inside = cumulative - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = upper, cumulative
    return lower


def _histograms(metric: Any) -> dict[str, dict[str, Any]]:
    """Count, mean and p50/p95 of a histogram, per first label value ("" unlabelled)."""
    raw: dict[str, dict[str, Any]] = {}
    for family in metric.collect():
        for s in family.samples:
            key = next(iter(v for k, v in s.labels.items() if k != "le"), "")
            entry = raw.setdefault(key, {"bounds": [], "count": 0.0, "sum": 0.0})
            if s.name.endswith("_bucket"):
                entry["bounds"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                entry["count"] = s.value
            elif s.name.endswith("_sum"):
                entry["sum"] = s.value
    return {key: latency_view(e["bounds"], e["count"], e["sum"]) for key, e in raw.items()}


def latency_view(bounds: list[tuple[float, float]], count: float, total: float
                 ) -> dict[str, Any]:
    bounds = sorted(bounds)
    return {"count": int(count), "mean_s": total / count if count else None,
            "p50_s": _quantile(0.5, bounds, count), "p95_s": _quantile(0.95, bounds, count)}


def spend_view(ledger: SpendLedger, cloud: list[str], device_id: str | None = None
               ) -> dict[str, Any]:
    """Today's and this month's spend per cloud expert, each cap with what counts against
    it, open reservations; with a fleet ledger (``ledger.url``) this device's rows from
    the database and the fleet's figures (leases, budget left, sync). Reads the ledger,
    which may be a database call: run it off the event loop."""
    gauges = ledger.gauges()
    fleet = gauges.online is not None
    error, usage = None, None
    try:
        usage = ledger.usage()
    except AgentError as exc:  # the fleet database did not answer
        error = str(exc)
    mine = (usage or {}).get("devices", {}).get(device_id, {}) if fleet else (usage or {})
    experts = {e: {"day_usd": 0.0, "month_usd": 0.0, "settled_calls": 0,
                   "open_reservations": 0} for e in cloud}
    experts.update({e: dict(row) for e, row in mine.get("experts", {}).items()})
    total = (usage or {}).get("total") or {}
    caps = []
    seen: set[str] = set()
    for expert in ["", *cloud]:  # "": the caps that apply to every call
        for lim in limits(ledger.caps, expert):
            if lim.label in seen:
                continue
            seen.add(lim.label)
            caps.append(_cap(lim, usage is not None, fleet, total, experts.get(expert, {})))
    fleet_view = None
    if fleet:
        fleet_view = {"device_id": device_id, "online": bool(gauges.online),
                      "unsynced_rows": gauges.unsynced_rows,
                      "lease_usd": dict(gauges.lease_usd),
                      "leased_usd": {e: float(v["held_usd"])
                                     for e, v in mine.get("leases", {}).items()},
                      "fleet_left_usd": dict(gauges.fleet_left_usd)}
    return {"ledger": "fleet" if fleet else "device",
            "day": (usage or {}).get("day"), "month": (usage or {}).get("month"),
            "total_day_usd": total.get("day_usd"), "total_month_usd": total.get("month_usd"),
            "open_reservations": sum(int(r["open_reservations"]) for r in experts.values()),
            "experts": experts, "caps": caps, "fleet": fleet_view, "error": error}


def _cap(lim: Limit, known: bool, fleet: bool, total: dict[str, Any],
         expert: dict[str, Any]) -> dict[str, Any]:
    """One cap and what counts against it. With a fleet ledger only the device caps are
    this device's to count; the fleet's own are summed over every device (the database's
    figure is ``fleet_left_usd``)."""
    key = f"{lim.period}_usd"
    spent: float | None = None
    if known and not (fleet and lim.scope != "device"):
        spent = float(expert.get(key, 0.0) if lim.scope == "expert" else total.get(key, 0.0))
    return {"label": lim.label, "period": lim.period, "scope": lim.scope, "cap_usd": lim.cap,
            "spent_usd": spent, "left_usd": None if spent is None else max(lim.cap - spent, 0.0)}


def accuracy_by_family(router: Any, rows: Iterable[tuple[str, str]]
                       ) -> dict[str, dict[str, float]]:
    """Each expert's mean P(correct) on the sample queries, per dataset family: what the
    router predicts it gets right, the figure every decision weighs."""
    sums: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for family, prompt in rows:
        counts[family] = counts.get(family, 0) + 1
        for expert, p in router.score(prompt).scores.items():
            row = sums.setdefault(expert, {})
            row[family] = row.get(family, 0.0) + p
    return {e: {f: round(v / counts[f], 4) for f, v in row.items()} for e, row in sums.items()}


def _breaker(expert: Any) -> str | None:
    """A cloud expert's breaker state; a local expert has none."""
    breaker = getattr(getattr(expert, "client", None), "breaker", None)
    return None if breaker is None else str(breaker.state)


@dataclass
class Dashboard:
    """Builds ``GET /v1/dashboard`` from one runtime. The router's accuracy on the sample
    queries is computed once per loaded router (48 scorings) and kept until a reload."""

    runtime: Runtime
    # (the router it was computed on, held weakly so that a replaced one can be freed)
    _accuracy: tuple[weakref.ref[Any], dict[str, dict[str, float]]] | None = field(
        default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def accuracy(self) -> dict[str, dict[str, float]] | None:
        """Per expert and dataset family; None in fixed mode (the router predicts nothing).
        Scores in the caller's thread: call it off the event loop."""
        from agent.doctor_routing import sample_rows

        router = self.runtime.router
        if router.mode == "fixed":
            return None
        current = getattr(router, "current", router)  # a RouterHolder's live router
        with self._lock:
            if self._accuracy is None or self._accuracy[0]() is not current:
                self._accuracy = (weakref.ref(current),
                                  accuracy_by_family(current, sample_rows()))
            return self._accuracy[1]

    def spend(self) -> dict[str, Any]:
        """The ledger's figures (a database call with a fleet ledger: off the loop)."""
        s = self.runtime.settings
        device = getattr(self.runtime.ledger, "device_id", None)
        return spend_view(self.runtime.ledger, [e.name for e in s.cloud_experts],
                          None if device is None else str(device))

    def experts(self, health: dict[str, Any],
                accuracy: dict[str, dict[str, float]] | None) -> list[dict[str, Any]]:
        rt = self.runtime
        profiles = health["router"].get("experts", {})
        out = []
        for row in health["experts"]:
            name = row["name"]
            expert = rt.experts[name]
            prices = expert.info.prices
            profile = profiles.get(name, {})
            left = rt.ledger.remaining(name) if expert.info.kind == "cloud" else None
            out.append({
                "name": name, "kind": expert.info.kind, "model": expert.info.model,
                "input_usd_per_mtok": prices.input_usd_per_mtok,
                "output_usd_per_mtok": prices.output_usd_per_mtok,
                "cached_input_usd_per_mtok": prices.cached_input_usd_per_mtok,
                "profile": profile.get("profile"),
                "profile_source": profile.get("profile_source"),
                "profile_hint": profile.get("hint"),
                "accuracy": None if accuracy is None else accuracy.get(name),
                "breaker": _breaker(expert), "available": expert.available(),
                "recent_share": row["recent_share"],
                "expected_cost_usd": row["expected_cost_usd"],
                "gain_needed": row["gain_needed"],
                "latency_estimate_s": row["latency_estimate_s"],
                "budget_left_usd": left})
        return out

    def traffic(self, bucket_s: int, now: float) -> dict[str, Any]:
        """Served decisions per chosen expert and route-only calls over the last
        ``BUCKETS`` buckets (from the decision log), and the counters and latency
        histograms of ``/metrics``."""
        rt, m = self.runtime, self.runtime.metrics
        start = (math.floor(now / bucket_s) - (BUCKETS - 1)) * bucket_s
        counts = [dict.fromkeys(rt.experts, 0) for _ in range(BUCKETS)]
        routed = [0] * BUCKETS
        for rec in rt.decisions.records():
            i = int((rec.at - start) // bucket_s)
            if not 0 <= i < BUCKETS:
                continue
            if not rec.served:
                routed[i] += 1
            elif rec.expert in counts[i]:
                counts[i][rec.expert] += 1
        buckets = [{"start": float(start + i * bucket_s), "experts": counts[i],
                    "route_calls": routed[i]} for i in range(BUCKETS)]
        router = _histograms(m.router_latency).get("", latency_view([], 0, 0))
        return {
            "bucket_s": bucket_s, "buckets": buckets,
            "decisions": _by_label(m.decisions),
            "route_calls": int(_counter(m.route_calls).get((), 0)),
            "requests": _by_label(m.requests),
            "fallbacks": [{"from_expert": f, "to_expert": t, "count": int(n)}
                          for (f, t), n in _counter(m.fallbacks).items()],
            "refusals": _by_label(m.refusals), "cascade": _by_label(m.cascade),
            "router_latency": router, "request_latency": _histograms(m.latency)}

    def decisions(self, last: int) -> list[dict[str, Any]]:
        return [{**r.as_dict(), "utilities": {k: round(v, 6) for k, v in r.utilities.items()},
                 "costs": {k: round(v, 8) for k, v in r.costs.items()}, "query": r.query}
                for r in self.runtime.decisions.records(last=last)]

    def view(self, spend: dict[str, Any], accuracy: dict[str, dict[str, float]] | None,
             *, decisions: int, bucket_s: int) -> dict[str, Any]:
        """The whole reply; on the event loop (it reads what the request path writes)."""
        rt = self.runtime
        now = time.time()
        health = rt.health(recent=RECENT)
        return {"object": "edgeroute.dashboard", "generated_at": round(now, 3),
                "uptime_s": health["uptime_s"],
                "show_prompts": rt.settings.server.dashboard_prompts,
                "default_expert": health["default_expert"],
                "fallback_expert": health["fallback_expert"],
                "router": health["router"], "experts": self.experts(health, accuracy),
                "spend": spend, "traffic": self.traffic(bucket_s, now),
                "decisions": self.decisions(decisions)}


def _page(name: str, media_type: str) -> Any:
    body = (resources.files("agent") / "assets" / "ui" / name).read_bytes()

    async def page() -> Response:
        return Response(body, media_type=media_type, headers=PAGE_HEADERS)

    return page


def dashboard_routes(runtime: Runtime) -> APIRouter:
    """The page's files and ``GET /v1/dashboard``; all read-only."""
    board = Dashboard(runtime)
    api = APIRouter()
    for path, (name, media_type) in PAGE_FILES.items():
        api.add_api_route(path, _page(name, media_type), methods=["GET"],
                          include_in_schema=False)

    @api.get("/v1/dashboard", summary="What the dashboard shows, as JSON (read-only).",
             response_model=DashboardView, responses=ERROR_RESPONSES)
    async def dashboard(
        decisions: int = Query(50, ge=1, le=1000, description="Recent decisions to list."),
        bucket_s: int = Query(60, ge=1, le=86_400,
                              description="Width of the traffic chart's buckets, seconds."),
    ) -> dict[str, Any]:
        """The experts (prices, profile and its source, predicted accuracy per dataset
        family on the shipped sample queries, breaker, share of the recent router
        decisions, expected cost per query), the spend (today and this month per expert,
        each cap and what counts against it, open reservations, the fleet's figures with a
        fleet ledger), the traffic (decisions per expert over time, fallbacks, refusals,
        cascade outcomes, router and request latency) and the recent decisions (no prompt
        text unless ``server.dashboard_prompts`` is on). Changes nothing."""
        spend = await asyncio.to_thread(board.spend)
        accuracy = await asyncio.to_thread(board.accuracy)
        return board.view(spend, accuracy, decisions=decisions, bucket_s=bucket_s)

    return api
