"""What the running daemon holds: its experts, its router, the spend ledger, the latency
estimates and the metrics; and how one query is decided and served.

Built once from settings (``build_runtime``), before the server starts, so a bad model
path is a one-line start-up error, not a traceback in a request. The app keeps it on
``app.state``; nothing here is module-global.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import (
    BundleError,
    ExpertCallError,
    ExpertUnavailableError,
    UnknownExpertError,
)
from agent.experts.base import Completion, Delta, Expert, GenerationParams, Message, Usage
from agent.ledger import BudgetExceededError, Caps, Ledger
from agent.metrics import Metrics, decision_kind
from agent.model_files import resolve_model
from agent.policy import Decision, ExpertState, Request, Weights, decide, tighter
from agent.routing import FixedRouter, Router, query_text
from agent.settings import Settings

log = logging.getLogger("edgeroute.runtime")


@dataclass(frozen=True)
class Hints:
    """A request's own limits (headers or body); they can only tighten the device's."""

    max_cost_usd: float | None = None
    max_latency_ms: float | None = None


def prompt_tokens_upper_bound(messages: list[Message]) -> int:
    """Tokens of a chat prompt, from above: no BPE tokenizer yields more tokens than UTF-8
    bytes; add a margin per message for role markers and a fixed one for a template's
    default system prompt. Over-reserving costs nothing but headroom."""
    return sum(len(m.get("content", "").encode()) + 32 for m in messages) + 256


@dataclass
class Runtime:
    settings: Settings
    experts: dict[str, Expert]
    router: Router
    ledger: Ledger
    metrics: Metrics = field(default_factory=Metrics)
    started_at: float = field(default_factory=time.time)
    latency_s: dict[str, float] = field(default_factory=dict)

    @property
    def fallback_expert(self) -> str:
        """Offline-first: the first local expert answers when another cannot."""
        return self.settings.local_experts[0].name

    # -- deciding -----------------------------------------------------------------------
    def _states(self, budgets: bool) -> dict[str, ExpertState]:
        out = {}
        for name, e in self.experts.items():
            available = getattr(e, "available", None)
            out[name] = ExpertState(
                name=name, kind=e.info.kind,
                input_usd_per_mtok=e.info.input_usd_per_mtok,
                output_usd_per_mtok=e.info.output_usd_per_mtok,
                available=available() if callable(available) else True,
                latency_s=self.latency_s.get(name),
                remaining_usd=(self.ledger.remaining(name)
                               if budgets and e.info.kind == "cloud" else None),
            )
        return out

    def decide(self, model: str, messages: list[Message], params: GenerationParams,
               hints: Hints = Hints()) -> Decision:
        requested = None if model == "auto" else model
        if requested is not None and requested not in self.experts:
            raise UnknownExpertError(requested, ["auto", *self.experts])
        scores: dict[str, float] = {}
        if requested is None:
            t = time.perf_counter()
            scores = self.router.scores(query_text(messages))
            self.metrics.router_latency.observe(time.perf_counter() - t)
        b, p = self.settings.budget, self.settings.policy
        req = Request(requested, prompt_tokens_upper_bound(messages), params.max_tokens,
                      tighter(b.max_request_usd, hints.max_cost_usd),
                      tighter(b.max_latency_ms, hints.max_latency_ms))
        weights = Weights(p.quality_weight, p.cost_weight, p.throughput_weight)
        kw: dict[str, Any] = {"weights": weights, "default_expert": self.settings.default_expert(),
                              "mode": self.router.mode}
        decision = decide(scores, self._states(budgets=True), req, **kw)
        if not decision.refused and b.on_exceeded == "refuse":
            free = decide(scores, self._states(budgets=False), req, **kw)
            if not free.refused and free.expert != decision.expert:
                self._refuse(f"{free.expert}: {decision.rejected.get(free.expert, 'over budget')}")
        if decision.refused:
            if all(r == "unavailable" for r in decision.rejected.values()):
                raise ExpertUnavailableError(decision.reason, retry_after_s=5)
            self._refuse(decision.reason)
        self.metrics.decisions.labels(decision_kind(decision.reason)).inc()
        return decision

    def _refuse(self, reason: str) -> None:
        self.metrics.refusals.labels("budget").inc()
        raise BudgetExceededError(f"refused by a budget: {reason}", param="model",
                                  code="budget_exceeded")

    def _fallback(self, decision: Decision, reason: str) -> Decision:
        log.warning("expert %s cannot answer (%s); falling back to %s", decision.expert,
                    reason, self.fallback_expert)
        self.metrics.fallbacks.labels(decision.expert, self.fallback_expert).inc()
        return Decision(self.fallback_expert, f"fallback: {reason}", decision.mode,
                        decision.scores, fallback_from=decision.expert,
                        rejected=decision.rejected)

    # -- serving -------------------------------------------------------------------------
    def _reserve(self, decision: Decision) -> tuple[Decision, int | None]:
        """Reserve the worst case for a cloud call; on a lost race, fall back or refuse."""
        if self.experts[decision.expert].info.kind != "cloud":
            return decision, None
        try:
            return decision, self.ledger.reserve(decision.expert, decision.expected_cost_usd)
        except BudgetExceededError as exc:
            if self.settings.budget.on_exceeded == "refuse":
                self.metrics.refusals.labels("budget").inc()
                raise
            return self._fallback(decision, exc.message), None

    def _settled(self, decision: Decision, row: int | None, usage: Usage, started: float) -> None:
        info = self.experts[decision.expert].info
        if row is not None:
            cost = info.cost_usd(usage)
            self.ledger.settle(row, cost, usage.prompt_tokens, usage.completion_tokens)
            self.metrics.spend.labels(info.name).inc(cost)
            left = self.ledger.remaining(info.name)
            if left is not None:
                self.metrics.budget_left.labels(info.name).set(left)
        elapsed = time.perf_counter() - started
        alpha = self.settings.policy.latency_ewma_alpha
        prev = self.latency_s.get(info.name)
        self.latency_s[info.name] = elapsed if prev is None else prev + alpha * (elapsed - prev)
        self.metrics.requests.labels(info.name).inc()
        self.metrics.latency.labels(info.name).observe(elapsed)

    async def complete(
        self, decision: Decision, messages: list[Message], params: GenerationParams
    ) -> tuple[Completion, Decision]:
        decision, row = self._reserve(decision)
        started = time.perf_counter()
        try:
            out = await self.experts[decision.expert].complete(messages, params)
        except ExpertCallError as exc:
            self._close_failed(row, exc)
            if decision.expert == self.fallback_expert:
                raise
            decision, row = self._fallback(decision, exc.reason), None
            out = await self.experts[decision.expert].complete(messages, params)
        self._settled(decision, row, out.usage, started)
        return out, decision

    def _close_failed(self, row: int | None, exc: ExpertCallError) -> None:
        if row is None:
            return
        usage = getattr(exc, "usage", None)
        if exc.partial and isinstance(usage, Usage):
            self.ledger.settle(row, self.experts[exc.expert].info.cost_usd(usage),
                               usage.prompt_tokens, usage.completion_tokens)
        else:
            self.ledger.release(row)

    async def stream(
        self, decision: Decision, messages: list[Message], params: GenerationParams
    ) -> AsyncIterator[tuple[Delta, Decision]]:
        """Stream deltas; falls back to the local expert only before the first byte."""
        decision, row = self._reserve(decision)
        started = time.perf_counter()
        sent = False
        try:
            async for delta in self.experts[decision.expert].stream(messages, params):
                sent = True
                if delta.usage is not None:
                    self._settled(decision, row, delta.usage, started)
                    row = None
                yield delta, decision
            return
        except ExpertCallError as exc:
            self._close_failed(row, exc)
            row = None
            if sent or exc.partial or decision.expert == self.fallback_expert:
                raise
            decision = self._fallback(decision, exc.reason)
        finally:
            if row is not None:  # the client went away before usage arrived: assume the worst
                self.ledger.settle_worst_case(row)
        started = time.perf_counter()
        async for delta in self.experts[decision.expert].stream(messages, params):
            if delta.usage is not None:
                self._settled(decision, None, delta.usage, started)
            yield delta, decision

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "uptime_s": round(time.time() - self.started_at, 3),
            "experts": [
                {"name": e.info.name, "kind": e.info.kind, "model": e.info.model,
                 "latency_estimate_s": self.latency_s.get(e.info.name)}
                for e in self.experts.values()
            ],
            "router": self.router.describe(),
            "default_expert": self.settings.default_expert(),
            "fallback_expert": self.fallback_expert,
        }

    def reload_router(self) -> dict[str, Any]:
        """Re-read the router bundle from its path (after an operator replaced it). The
        swap is atomic; a bad bundle raises BundleError and the old router keeps serving."""
        swap = getattr(self.router, "swap", None)
        if swap is None:
            raise BundleError("no router bundle is loaded (fixed mode); nothing to reload")
        swap()
        return self.router.describe()

    async def aclose(self) -> None:
        for expert in self.experts.values():
            await expert.aclose()
        self.ledger.close()


def open_ledger(settings: Settings) -> Ledger:
    b = settings.budget
    caps = Caps(b.daily_usd, b.monthly_usd, b.expert_daily_usd, b.expert_monthly_usd)
    return Ledger(settings.paths.data_dir / "ledger.sqlite3", caps)


def build_runtime(settings: Settings) -> Runtime:
    """Load every configured expert and the router. Raises ConfigError subclasses."""
    from agent.experts.local import LocalExpert

    experts: dict[str, Expert] = {}
    for cfg in settings.local_experts:
        path = resolve_model(cfg.model, cfg.sha256, settings.paths.cache_dir)
        experts[cfg.name] = LocalExpert.load(cfg, path)
    for cloud in settings.cloud_experts:
        from agent.experts.cloud import CloudExpert  # built by the cloud_bridge issue

        experts[cloud.name] = CloudExpert.from_settings(cloud, settings)
    return Runtime(settings=settings, experts=experts, router=build_router(settings, experts),
                   ledger=open_ledger(settings))


def build_router(settings: Settings, experts: dict[str, Expert]) -> Router:
    """The configured ONNX bundle; else the embedded default bundle when its experts are
    the configured ones; else FixedRouter (a documented mode, reported in /health)."""
    from agent.router_bundle import RouterHolder, embedded_bundle

    names = list(experts)
    threads = settings.router.threads
    configured = settings.router.bundle
    if configured is not None and str(configured).lower() != "none":
        return RouterHolder.load(Path(configured), expected_experts=names, threads=threads)
    fixed = FixedRouter(names, settings.default_expert())
    if configured is not None:  # explicitly "none"
        return fixed
    embedded = embedded_bundle()
    if embedded is None:
        fixed.note = "no router bundle installed: every query goes to the default expert"
        return fixed
    try:
        return RouterHolder.load(embedded, expected_experts=names, threads=threads)
    except BundleError as exc:
        log.warning("embedded router bundle not used: %s", exc)
        fixed.note = (f"embedded router bundle does not fit the configured experts ({exc}); "
                      "every query goes to the default expert; set router.bundle")
        return fixed
