"""What the running daemon holds: its experts, its router, the spend ledger, the latency
estimates and the metrics; and how one query is decided and served.

Built once from settings (``build_runtime``), before the server starts, so a bad model
path is a one-line start-up error, not a traceback in a request. The app keeps it on
``app.state``; nothing here is module-global.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.admission import Admission
from agent.cascade_runner import Cascade
from agent.decider import Decider, Hints
from agent.decision_log import DecisionLog
from agent.dispatch import Dispatcher, routable
from agent.errors import (
    BundleError,
)
from agent.expert_stats import ExpertStats
from agent.experts.base import Expert, Message
from agent.experts.batching import DecodeThread
from agent.ledger import Caps, Ledger, SpendLedger
from agent.metrics import Metrics
from agent.model_files import resolve_model
from agent.outcome_recorder import OutcomeRecorder
from agent.policy import Decision
from agent.refit import RefitSchedule
from agent.routing import FixedRouter, Router
from agent.settings import DASHBOARD_PROMPT_CHARS, Settings
from cloud_bridge.wire import ChatResult, SamplingParams, StreamPiece, fold

log = logging.getLogger("edgeroute.runtime")




@dataclass
class Runtime:
    settings: Settings
    experts: dict[str, Expert]
    router: Router
    ledger: SpendLedger
    admission: Admission
    metrics: Metrics = field(default_factory=Metrics)
    started_at: float = field(default_factory=time.time)
    decode: DecodeThread | None = None  # the local experts' one llama.cpp thread
    stats: ExpertStats = field(init=False)
    decisions: DecisionLog = field(default_factory=DecisionLog)
    decider: Decider = field(init=False)
    on_reload: list[Callable[[], object]] = field(default_factory=list)  # before a swap
    dispatcher: Dispatcher = field(init=False)
    outcomes: OutcomeRecorder | None = None  # what answers teach the profiles (outcomes.*)
    refits: RefitSchedule | None = field(default=None, init=False)
    cascade: Cascade = field(init=False)  # the local-first cascade (agent/cascade_runner.py)

    def __post_init__(self) -> None:
        self.stats = ExpertStats.for_policy(self.settings.policy)
        if self.settings.server.dashboard_prompts:  # the dashboard may show query text
            self.decisions.text_chars = DASHBOARD_PROMPT_CHARS
        self.decider = Decider(
            settings=self.settings, router=self.router,
            infos={n: e.info for n, e in self.experts.items()}, stats=self.stats,
            metrics=self.metrics, log=self.decisions, remaining=self.ledger.remaining,
            available=lambda name: routable(self.experts[name]), own_count=self._own_count)
        self.dispatcher = Dispatcher(
            experts=self.experts, ledger=self.ledger, metrics=self.metrics,
            admission=self.admission, fallback_expert=self.fallback_expert,
            on_exceeded=self.settings.budget.on_exceeded, stats=self.stats,
            log=self.decisions, sink=self.outcomes)
        self.cascade = Cascade(
            self.settings.policy, {n: e.info.kind for n, e in self.experts.items()},
            self.stats, self.metrics,
            lambda d, m, p, fallback: self.complete(d, m, p, fallback=fallback))
        if self.outcomes is not None:
            self.refits = RefitSchedule(self.settings, self.outcomes.store, self.metrics,
                                        self.reload_router)
        self.metrics.ledger.watch(self.ledger.gauges)
        for name, expert in self.experts.items():
            stats = getattr(expert, "batch_stats", None)
            if stats is not None:
                self.metrics.batches.watch(name, stats)

    @property
    def fallback_expert(self) -> str:
        """Offline-first: the first local expert answers when another cannot."""
        return self.settings.local_experts[0].name

    def _own_count(self, name: str, messages: list[Message]) -> int | None:
        count = getattr(self.experts[name], "prompt_tokens", None)
        return None if count is None else int(count(messages))

    # -- deciding (agent/decider.py) --------------------------------------------------------
    def decide(self, model: str, messages: list[Message], params: SamplingParams,
               hints: Hints | None = None, *, served: bool = True) -> Decision:
        return self.decider.decide(model, messages, params, hints or Hints(), served=served)

    # -- serving: both go through the one dispatch routine (agent/dispatch.py) ----------
    async def complete(
        self, decision: Decision, messages: list[Message], params: SamplingParams, *,
        cascade_first: str | None = None, fallback: bool = True,
    ) -> tuple[ChatResult, Decision]:
        """One whole answer, and the decision that produced it (a fallback's, if any).
        ``cascade_first``: a local expert to try first (``self.cascade.first``)."""
        if cascade_first is not None:
            return await self.cascade.run(decision, cascade_first, messages, params)
        pieces: list[StreamPiece] = []
        answered = decision
        async for piece, by in self.dispatcher.run(decision, messages, params, stream=False,
                                                   fallback=fallback):
            pieces.append(piece)
            answered = by
        assert pieces and pieces[-1].usage is not None  # every expert ends with its usage
        return fold(pieces), answered

    def stream(
        self, decision: Decision, messages: list[Message], params: SamplingParams
    ) -> AsyncGenerator[tuple[StreamPiece, Decision], None]:
        """Pieces as they come; falls back to the local expert only before the first.
        Close it (``aclose``) when done early: that frees the admission slot."""
        return self.dispatcher.run(decision, messages, params, stream=True)

    def health(self, recent: int = 200) -> dict[str, Any]:
        """Liveness, what is loaded, and how the router's recent decisions split: each
        expert's share of the last ``recent`` (served, ``auto``) and its expected cost."""
        split = self.decider.shares(last=recent)
        models = self.router.lengths
        return {
            "status": "ok",
            "uptime_s": round(time.time() - self.started_at, 3),
            "experts": [
                {"name": e.info.name, "kind": e.info.kind, "model": e.info.model,
                 **({"model_file": e.info.extra["path"]} if "path" in e.info.extra else {}),
                 "latency_estimate_s": self.stats.latency_s.get(e.info.name),
                 "recent_share": split["experts"][e.info.name]["share"],
                 "expected_cost_usd": split["experts"][e.info.name]["expected_cost_usd"],
                 "gain_needed": split["experts"][e.info.name]["gain_needed"],
                 **self.stats.lengths.describe(e.info.name, models.get(e.info.name))}
                for e in self.experts.values()
            ],
            "recent_decisions": split["decisions"],
            "router": self.router.describe(),
            "default_expert": self.settings.default_expert(),
            "fallback_expert": self.fallback_expert,
            "outcomes": (self.outcomes.describe() if self.outcomes is not None
                         else {"enabled": False}),
        }

    def start_background(self) -> None:
        """What runs beside the requests once the event loop does: the refit schedule."""
        if self.refits is not None:
            self.refits.start()

    def reload_router(self) -> dict[str, Any]:
        """Re-read the router bundle from its path (after an operator replaced it). The
        swap is atomic; a bad bundle raises BundleError and the old router keeps serving.
        ``on_reload`` runs first (a fleet's published profiles are fetched)."""
        for hook in self.on_reload:
            hook()
        self.router.swap()
        return self.router.describe()

    async def aclose(self) -> None:
        if self.refits is not None:
            await self.refits.aclose()
        if self.outcomes is not None:
            await self.outcomes.aclose()  # shadow gradings first: they hold ledger rows
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
    ledger = open_ledger(settings, holds_leases=True)
    metrics = Metrics()
    return Runtime(settings=settings, experts=experts, router=build_router(settings, experts),
                   ledger=ledger, admission=build_admission(settings, experts), decode=decode,
                   on_reload=[sync] if sync is not None else [], metrics=metrics,
                   outcomes=OutcomeRecorder.of(settings, experts, ledger, metrics))


def build_decider(settings: Settings) -> tuple[Decider, SpendLedger]:
    """The daemon's decisions without its models (``edgeroute route``, ``doctor``): experts
    described from their settings, the same router and policy, the ledger's budgets left
    (read, never reserved); a local expert's own prompt count from its vocabulary alone,
    loaded when a prompt needs it. What it cannot know is what only a running daemon has
    measured: latencies, answer lengths, breakers."""
    from agent.experts.info import describe_experts
    from agent.experts.local import count_prompt_tokens

    infos = describe_experts(settings)
    local = {cfg.name: cfg for cfg in settings.local_experts}
    vocabs: dict[str, Any] = {}

    def own_count(name: str, messages: list[Message]) -> int | None:
        if name not in local:
            return None
        if name not in vocabs:
            from llama_cpp import Llama

            cfg = local[name]
            path = resolve_model(cfg.model, cfg.sha256, settings.paths.cache_dir)
            vocabs[name] = Llama(model_path=str(path), vocab_only=True, verbose=False)
        return count_prompt_tokens(vocabs[name], messages)

    ledger = open_ledger(settings)
    decider = Decider(settings=settings, router=build_router(settings, infos), infos=infos,
                      stats=ExpertStats.for_policy(settings.policy), metrics=Metrics(),
                      log=DecisionLog(), remaining=ledger.remaining, own_count=own_count)
    return decider, ledger


def build_admission(settings: Settings, experts: dict[str, Expert]) -> Admission:
    """One gate per expert: a local model runs as many calls as its batch has slots
    (``n_parallel``), a cloud expert ``max_inflight_cloud``; each has its own bounded,
    timed queue (docs/configuration.md: Backpressure)."""
    srv = settings.server
    return Admission(
        limits={n: (srv.max_inflight_cloud if e.info.kind == "cloud" else e.info.concurrency)
                for n, e in experts.items()},
        max_queue=srv.max_queue_per_expert,
        timeout_s=srv.queue_timeout_s,
    )


def build_router(settings: Settings, experts: Mapping[str, object]) -> Router:
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
