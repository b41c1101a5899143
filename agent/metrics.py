"""Prometheus metrics of one daemon, on a registry of its own (no global registry)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from agent.experts.batching import BatchStats
    from agent.ledger import LedgerGauges
    from agent.policy import Decision


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("edgeroute_requests", "Answered requests per expert",
                                ["expert"], registry=r)
        self.decisions = Counter("edgeroute_decisions", "Routing decisions by reason kind",
                                 ["kind"], registry=r)
        self.route_calls = Counter("edgeroute_route_calls",
                                   "Route-only decisions (POST /v1/route): no expert called",
                                   registry=r)
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
        self.cascade = Counter(
            "edgeroute_cascade", "Local-first cascade attempts by outcome: kept, escalated, "
            "kept_over_budget (the escalation would break a cap), kept_cloud_failed",
            ["outcome"], registry=r)
        # What the device learns from its answers (agent.outcome_recorder, agent.shadow,
        # agent.refit).
        self.outcomes = Counter("edgeroute_outcomes", "Outcomes stored, by source: feedback, "
                                "check, shadow", ["source"], registry=r)
        self.feedback = Counter("edgeroute_feedback", "Feedback scores accepted (POST "
                                "/v1/feedback), by whether they replaced an earlier one",
                                ["replaced"], registry=r)
        self.shadow_calls = Counter("edgeroute_shadow_calls", "Shadow grading calls by role "
                                    "(reference, judge) and result (ok, failed, over_budget)",
                                    ["role", "result"], registry=r)
        self.shadow_skipped = Counter("edgeroute_shadow_skipped", "Sampled queries not "
                                      "shadow-graded, by reason (busy, over_budget, failed, "
                                      "unparsed)", ["reason"], registry=r)
        self.shadow_spend = Counter("edgeroute_shadow_spend_usd", "Settled shadow grading "
                                    "spend in USD", ["expert"], registry=r)
        self.refits = Counter("edgeroute_refits", "Scheduled profile refits by result: "
                              "applied, kept (the guard kept the old profiles), nothing",
                              ["result"], registry=r)

        self.batches = BatchCollector()
        r.register(self.batches)
        self.ledger = LedgerCollector()
        r.register(self.ledger)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class BatchCollector:
    """Local experts' batch engines, read when /metrics is scraped (the engine thread
    keeps its own figures; nothing is pushed per step)."""

    def __init__(self) -> None:
        self.sources: dict[str, Callable[[], BatchStats | None]] = {}

    def watch(self, expert: str, stats: Callable[[], BatchStats | None]) -> None:
        self.sources[expert] = stats

    def collect(self) -> Iterator[Metric]:
        gauges = {
            "slots": GaugeMetricFamily("edgeroute_local_batch_slots",
                                       "Sequences one decode step can serve (n_parallel)",
                                       labels=["expert"]),
            "active": GaugeMetricFamily("edgeroute_local_active_sequences",
                                        "Requests holding a batch slot", labels=["expert"]),
            "waiting": GaugeMetricFamily("edgeroute_local_waiting_sequences",
                                         "Requests waiting for a batch slot", labels=["expert"]),
            "batch_sequences": GaugeMetricFamily(
                "edgeroute_local_batch_size", "Sequences the last decode step served",
                labels=["expert"]),
            "batch_tokens": GaugeMetricFamily(
                "edgeroute_local_batch_tokens",
                "Tokens the last decode step decoded (prompt chunks included)",
                labels=["expert"]),
        }
        steps = CounterMetricFamily("edgeroute_local_decode_steps", "Batched decode steps",
                                    labels=["expert"])
        tokens = CounterMetricFamily("edgeroute_local_generated_tokens",
                                     "Tokens sampled by the batch engine", labels=["expert"])
        prompt = CounterMetricFamily("edgeroute_local_prompt_tokens",
                                     "Prompt tokens of admitted requests", labels=["expert"])
        cached = CounterMetricFamily(
            "edgeroute_local_cached_prompt_tokens",
            "Prompt tokens a batch slot's cache already held (not decoded again)",
            labels=["expert"])
        for expert, source in self.sources.items():
            st = source()
            if st is None:
                continue
            for key, family in gauges.items():
                family.add_metric([expert], getattr(st, key))
            steps.add_metric([expert], st.steps)
            tokens.add_metric([expert], st.generated_tokens)
            prompt.add_metric([expert], st.prompt_tokens)
            cached.add_metric([expert], st.cached_prompt_tokens)
        yield from gauges.values()
        yield steps
        yield tokens
        yield prompt
        yield cached


class LedgerCollector:
    """The spend ledger's own figures, read when /metrics is scraped: with a fleet ledger,
    this device's lease and the fleet's budget left per expert, whether the database
    answers, and the rows it has not received yet (a lone device's ledger has none)."""

    def __init__(self) -> None:
        self.source: Callable[[], LedgerGauges] | None = None

    def watch(self, source: Callable[[], LedgerGauges]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        g = self.source() if self.source is not None else None
        if g is None or g.online is None:
            return
        lease = GaugeMetricFamily("edgeroute_lease_usd", "Unspent offline lease this device "
                                  "holds from the fleet budget", labels=["expert"])
        for expert, usd in g.lease_usd.items():
            lease.add_metric([expert], usd)
        fleet = GaugeMetricFamily("edgeroute_fleet_budget_left_usd", "Least fleet budget "
                                  "left over the caps of an expert, at the last sync",
                                  labels=["expert"])
        for expert, usd in g.fleet_left_usd.items():
            fleet.add_metric([expert], usd)
        yield lease
        yield fleet
        yield GaugeMetricFamily("edgeroute_ledger_online", "1 while the fleet ledger's "
                                "database answers", value=1.0 if g.online else 0.0)
        yield GaugeMetricFamily("edgeroute_ledger_unsynced_rows", "Spend rows and outcomes "
                                "the fleet database has not received yet",
                                value=float(g.unsynced_rows or 0))


DecisionKind = Literal["requested", "router", "fixed", "budget", "fallback", "refused"]


def decision_kind(decision: Decision, requested: str | None, default_expert: str) -> DecisionKind:
    """A low-cardinality label for a decision, from its fields (never its reason text):
    the client named the expert; the router chose; fixed mode's default expert; a limit
    moved fixed mode off its default; a fallback; no expert fits."""
    if decision.refused:
        return "refused"
    if requested is not None:
        return "requested"
    if decision.fallback_from is not None:
        return "fallback"
    if decision.mode == "fixed":
        return "fixed" if decision.expert == default_expert else "budget"
    return "router"
