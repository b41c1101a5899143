"""What the running daemon holds: its experts, its router, the spend ledger, the latency
estimates and the metrics; and how one query is decided and served.

Built once from settings (``build_runtime``), before the server starts, so a bad model
path is a one-line start-up error, not a traceback in a request. The app keeps it on
``app.state``; nothing here is module-global.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.admission import Admission
from agent.cascade import CascadeRule, keep_local, local_first
from agent.dispatch import Dispatcher, routable
from agent.errors import (
    BundleError,
    ExpertCallError,
    ExpertUnavailableError,
    RequestError,
    UnknownExpertError,
)
from agent.experts.base import Expert, Message
from agent.experts.batching import DecodeThread
from agent.ledger import (
    BudgetExceededError,
    Caps,
    Ledger,
    SpendLedger,
    prompt_tokens_upper_bound,
)
from agent.metrics import Metrics, decision_kind
from agent.model_files import resolve_model
from agent.policy import (
    Decision,
    ExpertState,
    Request,
    Weights,
    decide,
    missing_capability,
    tighter,
)
from agent.routing import FixedRouter, Router, query_text
from agent.settings import Settings
from cloud_bridge.wire import ChatResult, SamplingParams, StreamPiece

log = logging.getLogger("edgeroute.runtime")


@dataclass(frozen=True)
class Hints:
    """A request's own limits (headers or body); they can only tighten the device's."""

    max_cost_usd: float | None = None
    max_latency_ms: float | None = None
    cascade: bool | None = None  # None: the device's policy.cascade


def prompt_tokens_typical(messages: list[Message]) -> int:
    """Tokens of a chat prompt as English text usually has them (about 4 characters a
    token, OpenAI's rule of thumb) plus role markers: the expected cost the policy weighs.
    Budgets reserve the upper bound below, never this."""
    return sum(len(m.get("content", "")) // 4 + 8 for m in messages) + 8


def _tool_bytes(messages: list[Message], params: SamplingParams) -> int:
    """Tool definitions and earlier tool calls are prompt too: their JSON bytes bound
    their tokens (the ledger's bound counts message contents)."""
    parts: list[Any] = [m["tool_calls"] for m in messages if m.get("tool_calls")]
    if params.tools:
        parts.append(list(params.tools))
    return len(json.dumps(parts, ensure_ascii=False).encode()) if parts else 0


def _needs_tools(messages: list[Message], params: SamplingParams) -> bool:
    """Tools offered, or a conversation that already holds tool calls or results: only
    an expert that declares tools can continue it."""
    return bool(params.tools) or any(m.get("tool_calls") or m.get("role") == "tool"
                                     for m in messages)


CAPABILITY_ORDER = ("tools", "response_format", "messages")  # which field a 400 names


def _own_count(e: Expert, messages: list[Message], req: Request) -> int | None:
    """The expert's own prompt count, asked only when the byte bound does not fit its
    context (counting takes a tokenizer pass); None: the bound stands."""
    ctx, count = e.info.context_tokens, getattr(e, "prompt_tokens", None)
    if ctx is None or count is None or req.prompt_tokens + req.max_tokens <= ctx:
        return None
    tool_part = req.prompt_tokens - prompt_tokens_upper_bound(messages)  # tools' bytes
    return int(count(messages)) + tool_part


@dataclass
class Runtime:
    settings: Settings
    experts: dict[str, Expert]
    router: Router
    ledger: SpendLedger
    admission: Admission
    metrics: Metrics = field(default_factory=Metrics)
    started_at: float = field(default_factory=time.time)
    latency_s: dict[str, float] = field(default_factory=dict)
    decode: DecodeThread | None = None  # the local experts' one llama.cpp thread
    on_reload: list[Callable[[], object]] = field(default_factory=list)  # before a swap
    dispatcher: Dispatcher = field(init=False)

    def __post_init__(self) -> None:
        self.dispatcher = Dispatcher(
            experts=self.experts, ledger=self.ledger, metrics=self.metrics,
            admission=self.admission, fallback_expert=self.fallback_expert,
            on_exceeded=self.settings.budget.on_exceeded,
            latency_alpha=self.settings.policy.latency_ewma_alpha, latency_s=self.latency_s)
        self.metrics.ledger.watch(self.ledger.gauges)
        for name, expert in self.experts.items():
            stats = getattr(expert, "batch_stats", None)
            if stats is not None:
                self.metrics.batches.watch(name, stats)

    @property
    def fallback_expert(self) -> str:
        """Offline-first: the first local expert answers when another cannot."""
        return self.settings.local_experts[0].name

    # -- deciding -----------------------------------------------------------------------
    def _states(self, budgets: bool, messages: list[Message],
                req: Request) -> dict[str, ExpertState]:
        out = {}
        for name, e in self.experts.items():
            out[name] = ExpertState(
                name=name, kind=e.info.kind,
                input_usd_per_mtok=e.info.prices.input_usd_per_mtok,
                output_usd_per_mtok=e.info.prices.output_usd_per_mtok,
                available=routable(e),
                latency_s=self.latency_s.get(name),
                remaining_usd=(self.ledger.remaining(name)
                               if budgets and e.info.kind == "cloud" else None),
                context_tokens=e.info.context_tokens,
                prompt_tokens=_own_count(e, messages, req),
                tools=e.info.tools,
                json_mode=e.info.json_mode,
            )
        return out

    def decide(self, model: str, messages: list[Message], params: SamplingParams,
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
        bound = prompt_tokens_upper_bound(messages) + _tool_bytes(messages, params)
        req = Request(requested, bound, params.max_tokens,
                      tighter(b.max_request_usd, hints.max_cost_usd),
                      tighter(b.max_latency_ms, hints.max_latency_ms),
                      expected_prompt_tokens=prompt_tokens_typical(messages),
                      tools=_needs_tools(messages, params), json_mode=params.json_mode)
        weights = Weights(p.quality_weight, p.usd_per_correct, p.throughput_weight,
                          p.local_margin)
        kw: dict[str, Any] = {"weights": weights, "default_expert": self.settings.default_expert(),
                              "mode": self.router.mode}
        states = self._states(True, messages, req)
        decision = decide(scores, states, req, **kw)
        if not decision.refused and b.on_exceeded == "refuse":
            free = decide(scores, self._states(False, messages, req), req, **kw)
            if not free.refused and free.expert != decision.expert:
                self._refuse(f"{free.expert}: {decision.rejected.get(free.expert, 'over budget')}")
        if decision.refused:
            self._no_expert(decision, states, req)
        self.metrics.decisions.labels(
            decision_kind(decision, requested, self.settings.default_expert())).inc()
        return decision

    def _no_expert(self, decision: Decision, states: dict[str, ExpertState],
                   req: Request) -> None:
        """Why nothing fits, as the right status: every expert lacks something the request
        asks for (a capability never comes back): 400 naming the field; the rest are only
        unavailable: 503; else a budget refused it: 429."""
        missing = {n: m for n, e in states.items() if (m := missing_capability(e, req))}
        others = [r for n, r in decision.rejected.items() if n not in missing]
        if not others:
            params = [m[0] for m in missing.values()]
            param = min(params, key=CAPABILITY_ORDER.index)
            self.metrics.refusals.labels("capability").inc()
            raise RequestError(f"no configured expert can serve this request's {param}: "
                               + "; ".join(f"{n}: {m[1]}" for n, m in sorted(missing.items())),
                               param=param, code=f"unsupported_{param}")
        if all(r == "unavailable" for r in others):
            raise ExpertUnavailableError(decision.reason, retry_after_s=5)
        self._refuse(decision.reason)

    def _refuse(self, reason: str) -> None:
        self.metrics.refusals.labels("budget").inc()
        raise BudgetExceededError(f"refused by a budget: {reason}", param="model",
                                  code="budget_exceeded")

    # -- the local-first cascade (agent/cascade.py) ----------------------------------------
    def cascade_rule(self) -> CascadeRule:
        p = self.settings.policy
        return CascadeRule(p.cascade_band, p.cascade_threshold, p.cascade_signal)

    def cascade_first(self, decision: Decision, params: SamplingParams, requested: bool,
                      hints: Hints = Hints(), *, stream: bool = False) -> str | None:
        """The local expert to try before the decision's cloud expert, or None: the
        cascade is on (the request's ``edgeroute.cascade``, else the setting), the router
        chose (no expert named), the reply is plain text (no tools, no JSON mode: a local
        answer's confidence is about text), and a stream only with ``cascade_stream``."""
        p = self.settings.policy
        on = p.cascade if hints.cascade is None else hints.cascade
        if not on or requested or params.tools or params.json_mode:
            return None
        if stream and not p.cascade_stream:
            return None
        kinds = {n: e.info.kind for n, e in self.experts.items()}
        return local_first(decision, kinds, p.cascade_band)

    async def _cascade(self, decision: Decision, local: str, messages: list[Message],
                       params: SamplingParams) -> tuple[ChatResult, Decision]:
        """Answer with ``local`` first; keep it when confident, else ask the decision's
        cloud expert. The ledger sees only the cloud call; an escalation that a budget
        refuses, or that fails, keeps the local answer and says so."""
        rule = self.cascade_rule()
        attempt = replace(decision, expert=local, expected_cost_usd=0.0,
                          expected_quality=decision.scores.get(local),
                          expected_latency_s=self.latency_s.get(local),
                          reason=f"cascade: {local} first, {decision.expert} if unsure")
        started = time.perf_counter()
        info: dict[str, object] = {
            "local_expert": local, "cloud_expert": decision.expert,
            "signal": rule.signal, "threshold": rule.threshold, "band": rule.band}
        try:
            answer, by = await self.complete(attempt, messages, params)
        except (ExpertCallError, ExpertUnavailableError) as exc:  # busy or failed: the cloud
            info |= {"confidence": None, "note": f"local attempt failed ({exc})",
                     "local_latency_s": round(time.perf_counter() - started, 4)}
            cloud, cdec = await self.complete(decision, messages, params)
            return cloud, self._cascaded(cdec, info, "escalated")
        conf = answer.confidence
        info |= {"local_expert": by.expert,
                 "confidence": conf.as_dict() if conf is not None else None,
                 "local_latency_s": round(time.perf_counter() - started, 4),
                 "local_finish_reason": answer.finish_reason}
        value = getattr(conf, rule.signal) if conf is not None else None
        if keep_local(value, answer.finish_reason, rule):
            return answer, self._cascaded(by, info, "kept")
        try:
            cloud, cdec = await self.complete(decision, messages, params, fallback=False)
        except BudgetExceededError as exc:
            info["note"] = (f"escalation to {decision.expert} would break a budget "
                            f"({exc.message}); kept the local answer")
            return answer, self._cascaded(by, info, "kept_over_budget")
        except (ExpertCallError, ExpertUnavailableError) as exc:
            info["note"] = f"escalation to {decision.expert} failed ({exc}); kept the local answer"
            return answer, self._cascaded(by, info, "kept_cloud_failed")
        return cloud, self._cascaded(cdec, info, "escalated")

    def _cascaded(self, by: Decision, info: dict[str, object], outcome: str) -> Decision:
        self.metrics.cascade.labels(outcome).inc()
        return replace(by, cascade={**info, "outcome": outcome})

    # -- serving: both go through the one dispatch routine (agent/dispatch.py) ----------
    async def complete(
        self, decision: Decision, messages: list[Message], params: SamplingParams, *,
        cascade_first: str | None = None, fallback: bool = True,
    ) -> tuple[ChatResult, Decision]:
        """One whole answer, and the decision that produced it (a fallback's, if any).
        ``cascade_first``: a local expert to try first (:meth:`cascade_first`)."""
        if cascade_first is not None:
            return await self._cascade(decision, cascade_first, messages, params)
        parts: list[str] = []
        calls: list[dict[str, Any]] = []
        last, answered = StreamPiece(), decision
        async for piece, by in self.dispatcher.run(decision, messages, params, stream=False,
                                                   fallback=fallback):
            parts.append(piece.content)
            calls.extend(piece.tool_calls)
            last, answered = piece, by
        assert last.usage is not None  # every expert ends with its usage
        return ChatResult("".join(parts), last.finish_reason or "stop", last.usage,
                          tool_calls=tuple(calls), confidence=last.confidence), answered

    def stream(
        self, decision: Decision, messages: list[Message], params: SamplingParams
    ) -> AsyncGenerator[tuple[StreamPiece, Decision], None]:
        """Pieces as they come; falls back to the local expert only before the first.
        Close it (``aclose``) when done early: that frees the admission slot."""
        return self.dispatcher.run(decision, messages, params, stream=True)

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
        swap is atomic; a bad bundle raises BundleError and the old router keeps serving.
        ``on_reload`` runs first (a fleet's published profiles are fetched)."""
        for hook in self.on_reload:
            hook()
        self.router.swap()
        return self.router.describe()

    async def aclose(self) -> None:
        for expert in self.experts.values():
            await expert.aclose()
        if self.decode is not None:
            await asyncio.to_thread(self.decode.close)
        self.ledger.close()


def open_ledger(settings: Settings, *, holds_leases: bool = False) -> SpendLedger:
    """The device's own SQLite ledger, or with ``ledger.url`` the fleet's (PostgreSQL);
    ``holds_leases``: this process (the daemon) takes and renews the device's leases."""
    b = settings.budget
    caps = Caps(b.daily_usd, b.monthly_usd, b.expert_daily_usd, b.expert_monthly_usd,
                b.device_daily_usd, b.device_monthly_usd)
    from agent.fleet_db import FleetConfig

    fleet = FleetConfig.from_settings(settings)
    if fleet is None:
        return Ledger(settings.paths.data_dir / "ledger.sqlite3", caps)
    from agent.fleet_ledger import FleetLedger

    return FleetLedger(fleet, caps, [e.name for e in settings.cloud_experts],
                       settings.paths.data_dir, holds_leases=holds_leases)


def build_runtime(settings: Settings) -> Runtime:
    """Load every configured expert and the router. Raises ConfigError subclasses."""
    from agent.experts.local import LocalExpert

    experts: dict[str, Expert] = {}
    decode = DecodeThread()  # one llama.cpp thread for every local model (batching.py)
    for cfg in settings.local_experts:
        path = resolve_model(cfg.model, cfg.sha256, settings.paths.cache_dir)
        experts[cfg.name] = LocalExpert.load(cfg, path, decode=decode)
    for cloud in settings.cloud_experts:
        from agent.experts.cloud import CloudExpert  # built by the cloud_bridge issue

        experts[cloud.name] = CloudExpert.from_settings(cloud, settings)
    from agent.fleet_profiles import profile_sync

    sync = profile_sync(settings)  # a fleet's published profiles, before the router loads
    if sync is not None:
        sync()
    return Runtime(settings=settings, experts=experts, router=build_router(settings, experts),
                   ledger=open_ledger(settings, holds_leases=True),
                   admission=build_admission(settings, experts), decode=decode,
                   on_reload=[sync] if sync is not None else [])


def build_admission(settings: Settings, experts: dict[str, Expert]) -> Admission:
    """One gate per expert: a local model runs as many calls as its batch has slots
    (``n_parallel``), a cloud expert ``max_inflight_cloud``; each has its own bounded,
    timed queue (README: Backpressure)."""
    srv = settings.server
    return Admission(
        limits={n: (srv.max_inflight_cloud if e.info.kind == "cloud" else e.info.concurrency)
                for n, e in experts.items()},
        max_queue=srv.max_queue_per_expert,
        timeout_s=srv.queue_timeout_s,
    )


def build_router(settings: Settings, experts: dict[str, Expert]) -> Router:
    """The configured bundle, else the embedded default bundle (an ``irt`` bundle scores
    every configured expert through ability profiles); ``router.bundle=none`` or no bundle
    installed: FixedRouter (a documented mode, reported in /health)."""
    from agent.profile_router import open_bundle
    from agent.router_bundle import embedded_bundle

    names = list(experts)
    threads = settings.router.threads
    configured = settings.router.bundle
    if configured is not None and str(configured).lower() != "none":
        return open_bundle(Path(configured), settings, threads, names)  # type: ignore[no-any-return]
    fixed = FixedRouter(names, settings.default_expert())
    if configured is not None:  # explicitly "none"
        return fixed
    embedded = embedded_bundle()
    if embedded is None:
        fixed.note = "no router bundle installed: every query goes to the default expert"
        return fixed
    try:
        return open_bundle(embedded, settings, threads, names)  # type: ignore[no-any-return]
    except BundleError as exc:
        log.warning("embedded router bundle not used: %s", exc)
        fixed.note = (f"embedded router bundle does not fit the configured experts ({exc}); "
                      "every query goes to the default expert; set router.bundle")
        return fixed
