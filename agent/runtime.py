"""What the running daemon holds: its experts and its router, and how a query is served.

Built once from settings (``build_runtime``), before the server starts, so a bad model
path is a one-line start-up error, not a traceback in a request. The app keeps it on
``app.state``; nothing here is module-global.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from agent.errors import ExpertCallError, UnknownExpertError
from agent.experts.base import Completion, Delta, Expert, GenerationParams, Message
from agent.model_files import resolve_model
from agent.policy import Decision, decide
from agent.routing import FixedRouter, Router, query_text
from agent.settings import Settings

log = logging.getLogger("edgeroute.runtime")


@dataclass
class Runtime:
    settings: Settings
    experts: dict[str, Expert]
    router: Router
    started_at: float = field(default_factory=time.time)

    @property
    def fallback_expert(self) -> str:
        """Offline-first: the first local expert answers when another cannot."""
        return self.settings.local_experts[0].name

    def available(self) -> frozenset[str]:
        return frozenset(self.experts)

    def decide(self, model: str, messages: list[Message]) -> Decision:
        requested = None if model == "auto" else model
        if requested is not None and requested not in self.experts:
            raise UnknownExpertError(requested, ["auto", *self.experts])
        scores = self.router.scores(query_text(messages)) if requested is None else {}
        return decide(
            scores,
            self.available(),
            requested=requested,
            default_expert=self.settings.default_expert(),
            mode=self.router.mode,
        )

    def _fallback(self, decision: Decision, exc: ExpertCallError) -> Decision:
        log.warning("expert %s failed (%s); falling back to %s", exc.expert, exc.reason,
                    self.fallback_expert)
        return Decision(
            self.fallback_expert,
            f"fallback: {exc.reason}",
            decision.mode,
            decision.scores,
            fallback_from=decision.expert,
        )

    async def complete(
        self, decision: Decision, messages: list[Message], params: GenerationParams
    ) -> tuple[Completion, Decision]:
        try:
            return await self.experts[decision.expert].complete(messages, params), decision
        except ExpertCallError as exc:
            if decision.expert == self.fallback_expert:
                raise
            decision = self._fallback(decision, exc)
            return await self.experts[decision.expert].complete(messages, params), decision

    async def stream(
        self, decision: Decision, messages: list[Message], params: GenerationParams
    ) -> AsyncIterator[tuple[Delta, Decision]]:
        """Stream deltas; falls back to the local expert only before the first byte."""
        sent = False
        try:
            async for delta in self.experts[decision.expert].stream(messages, params):
                sent = True
                yield delta, decision
            return
        except ExpertCallError as exc:
            if sent or exc.partial or decision.expert == self.fallback_expert:
                raise
            decision = self._fallback(decision, exc)
        async for delta in self.experts[decision.expert].stream(messages, params):
            yield delta, decision

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "uptime_s": round(time.time() - self.started_at, 3),
            "experts": [
                {"name": e.info.name, "kind": e.info.kind, "model": e.info.model}
                for e in self.experts.values()
            ],
            "router": self.router.describe(),
            "default_expert": self.settings.default_expert(),
            "fallback_expert": self.fallback_expert,
        }

    async def aclose(self) -> None:
        for expert in self.experts.values():
            await expert.aclose()


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
    return Runtime(settings=settings, experts=experts, router=build_router(settings, experts))


def build_router(settings: Settings, experts: dict[str, Expert]) -> Router:
    """The configured ONNX bundle, else the embedded default bundle, else FixedRouter."""
    bundle = settings.router.bundle
    if bundle is not None and str(bundle).lower() != "none":
        from agent.router_bundle import OnnxRouter  # built by the export issue

        return OnnxRouter.load(bundle, expected_experts=list(experts),
                               threads=settings.router.threads)
    return FixedRouter(list(experts), settings.default_expert())
