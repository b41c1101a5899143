"""Prometheus metrics of one daemon, on a registry of its own (no global registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("edgeroute_requests", "Answered requests per expert",
                                ["expert"], registry=r)
        self.decisions = Counter("edgeroute_decisions", "Routing decisions by reason kind",
                                 ["kind"], registry=r)
        self.fallbacks = Counter("edgeroute_fallbacks", "Answers given by the fallback expert",
                                 ["from_expert", "to_expert"], registry=r)
        self.refusals = Counter("edgeroute_refusals", "Requests refused by a budget or limit",
                                ["reason"], registry=r)
        self.spend = Counter("edgeroute_spend_usd", "Settled cloud spend in USD",
                             ["expert"], registry=r)
        self.budget_left = Gauge("edgeroute_budget_left_usd",
                                 "Least budget left over the caps for an expert", ["expert"],
                                 registry=r)
        self.latency = Histogram(
            "edgeroute_request_latency_seconds", "Wall time of answered requests", ["expert"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64), registry=r)
        self.router_latency = Histogram(
            "edgeroute_router_latency_seconds", "Router scoring time",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1), registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def decision_kind(reason: str) -> str:
    """A low-cardinality label for a decision's free-text reason."""
    for prefix, kind in (("requested", "requested"), ("fallback", "fallback"),
                         ("fixed", "fixed"), ("highest", "router"), ("default", "budget"),
                         ("no expert", "refused")):
        if reason.startswith(prefix):
            return kind
    return "other"
