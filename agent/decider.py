"""How one request is decided: the router's scores, each expert's facts, the budgets left
and the request's own limits go into the pure policy (``agent.policy.decide``); a
``Decision`` comes out, and is logged.

The daemon's chat endpoints, its route-only endpoint (``POST /v1/route``) and the
in-process ``edgeroute route`` all decide here, so a route-only answer is the decision the
same request would be served with. The prompt is measured once (``agent.prompt_size``) and
travels in the decision; each expert's expected answer length comes from its length model
and this device's correction (``agent.expert_stats``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from agent.decision_log import DecisionLog, new_completion_id
from agent.errors import ExpertUnavailableError, RequestError, UnknownExpertError
from agent.expert_stats import ExpertStats
from agent.experts.base import Message
from agent.experts.info import ExpertInfo
from agent.ledger import BudgetExceededError
from agent.metrics import Metrics, decision_kind
from agent.policy import (
    Decision,
    ExpertState,
    Request,
    Weights,
    decide,
    missing_capability,
    tighter,
)
from agent.prompt_size import PromptSize, prompt_size
from agent.routing import Router, Scoring, query_text
from agent.settings import Settings
from cloud_bridge.messages import first_media
from cloud_bridge.wire import SamplingParams

# Which field a 400 names when experts lack different things (``messages.N.content``, a
# media part no expert reads, ranks as ``messages``).
CAPABILITY_ORDER = ("tools", "response_format", "messages")


@dataclass(frozen=True)
class Hints:
    """A request's own limits (headers or body); they can only tighten the device's."""

    max_cost_usd: float | None = None
    max_latency_ms: float | None = None
    cascade: bool | None = None  # None: the device's policy.cascade


def needs_tools(messages: list[Message], params: SamplingParams) -> bool:
    """Tools offered, or a conversation that already holds tool calls or results: only
    an expert that declares tools can continue it."""
    return bool(params.tools) or any(m.get("tool_calls") or m.get("role") == "tool"
                                     for m in messages)


def _never(name: str, messages: list[Message]) -> int | None:
    return None


@dataclass
class Decider:
    """Everything a decision reads. ``remaining``: the least budget left of a cloud expert
    (the ledger's; None: uncapped); ``available``: whether the policy may pick an expert now
    (a cloud expert's breaker); ``own_count``: an expert's own count of a prompt that the
    byte bound says does not fit its context (a local model's tokenizer), else None."""

    settings: Settings
    router: Router
    infos: Mapping[str, ExpertInfo]
    stats: ExpertStats
    metrics: Metrics
    log: DecisionLog
    remaining: Callable[[str], float | None]
    available: Callable[[str], bool] = lambda name: True
    own_count: Callable[[str, list[Message]], int | None] = _never

    def decide(self, model: str, messages: list[Message], params: SamplingParams,
               hints: Hints = Hints(), *, served: bool = True) -> Decision:
        """The decision for one request; raises what the request should answer instead
        (400 unknown expert or a capability no expert has, 429 a budget, 503 none up).
        ``served=False``: a route-only call (counted apart, logged as such)."""
        requested = None if model == "auto" else model
        if requested is not None and requested not in self.infos:
            raise UnknownExpertError(requested, ["auto", *self.infos])
        scoring = Scoring({})
        text = query_text(messages) if requested is None or self.log.text_chars else None
        if requested is None:
            t = time.perf_counter()
            scoring = self.router.score(text or "")
            self.metrics.router_latency.observe(time.perf_counter() - t)
        size = prompt_size(messages, params.tools)
        req = self._request(requested, size, params, hints, needs_tools(messages, params),
                            first_media(messages))
        p = self.settings.policy
        weights = Weights(p.quality_weight, p.usd_per_correct, p.throughput_weight,
                          p.local_margin)
        kw: dict[str, Any] = {"weights": weights, "default_expert": self.settings.default_expert(),
                              "mode": self.router.mode}
        states = self._states(True, messages, req, size, scoring, params.max_tokens)
        decision = decide(scoring.scores, states, req, **kw)
        decision = replace(decision, prompt_bound=size.upper_bound, query=scoring.features,
                           lengths=dict(scoring.lengths), id=new_completion_id())
        if not decision.refused and self.settings.budget.on_exceeded == "refuse":
            free = decide(scoring.scores, self._states(False, messages, req, size, scoring,
                                                       params.max_tokens), req, **kw)
            if not free.refused and free.expert != decision.expert:
                self._refuse(f"{free.expert}: {decision.rejected.get(free.expert, 'over budget')}")
        if decision.refused:
            self._no_expert(decision, states, req)
        if served:
            self.metrics.decisions.labels(
                decision_kind(decision, requested, self.settings.default_expert())).inc()
        else:
            self.metrics.route_calls.inc()
        self.log.record(decision, served=served, auto=requested is None, text=text)
        return decision

    def _request(self, requested: str | None, size: PromptSize, params: SamplingParams,
                 hints: Hints, tools: bool, media: Mapping[str, int]) -> Request:
        b = self.settings.budget
        return Request(requested, size.upper_bound, params.max_tokens,
                       tighter(b.max_request_usd, hints.max_cost_usd),
                       tighter(b.max_latency_ms, hints.max_latency_ms),
                       expected_prompt_tokens=size.typical, tools=tools,
                       json_mode=params.json_mode, media=media)

    def _states(self, budgets: bool, messages: list[Message], req: Request, size: PromptSize,
                scoring: Scoring, max_tokens: int) -> dict[str, ExpertState]:
        u = scoring.features.u if scoring.features is not None else None
        out = {}
        for name, info in self.infos.items():
            out[name] = ExpertState(
                name=name, kind=info.kind, prices=info.prices,
                available=self.available(name),
                latency_s=self.stats.latency_s.get(name),
                remaining_usd=(self.remaining(name)
                               if budgets and info.kind == "cloud" else None),
                expected_output_tokens=self.stats.lengths.expected(
                    name, scoring.lengths.get(name), u, max_tokens),
                context_tokens=info.context_tokens,
                prompt_tokens=self._own_count(info, messages, req, size),
                tools=info.tools,
                json_mode=info.json_mode,
                modalities=frozenset(info.modalities),
            )
        return out

    def _own_count(self, info: ExpertInfo, messages: list[Message], req: Request,
                   size: PromptSize) -> int | None:
        """The expert's own prompt count, asked only when the byte bound does not fit its
        context (counting takes a tokenizer pass); None: the bound stands."""
        ctx = info.context_tokens
        if ctx is None or req.prompt_tokens + req.max_tokens <= ctx:
            return None
        count = self.own_count(info.name, messages)
        return None if count is None else count + size.tool_bytes

    def _no_expert(self, decision: Decision, states: dict[str, ExpertState],
                   req: Request) -> None:
        """Why nothing fits, as the right status: every expert lacks something the request
        asks for (a capability never comes back): 400 naming the field; the rest are only
        unavailable: 503; else a budget refused it: 429."""
        missing = {n: m for n, e in states.items() if (m := missing_capability(e, req))}
        others = [r for n, r in decision.rejected.items() if n not in missing]
        if not others:
            params = [m[0] for m in missing.values()]
            param = min(params, key=lambda p: CAPABILITY_ORDER.index(p.split(".")[0]))
            self.metrics.refusals.labels("capability").inc()
            code = "unsupported_content" if param.endswith(".content") else f"unsupported_{param}"
            raise RequestError(f"no configured expert can serve this request's {param}: "
                               + "; ".join(f"{n}: {m[1]}" for n, m in sorted(missing.items())),
                               param=param, code=code)
        if all(r == "unavailable" for r in others):
            raise ExpertUnavailableError(decision.reason, retry_after_s=5)
        self._refuse(decision.reason)

    def _refuse(self, reason: str) -> None:
        self.metrics.refusals.labels("budget").inc()
        raise BudgetExceededError(f"refused by a budget: {reason}", param="model",
                                  code="budget_exceeded")

    def shares(self, *, last: int | None = None, served: bool | None = True
               ) -> dict[str, Any]:
        """Each expert's share of the router's recent decisions, the P(correct) points it
        would have needed where it was not chosen, and its mean expected cost there."""
        names = list(self.infos)
        n, shares = self.log.shares(names, served=served, last=last)
        return {"decisions": n, "experts": {
            e: {"share": round(shares[e], 4),
                "expected_cost_usd": _round(self.log.mean_cost(e, served=served, last=last), 8),
                "gain_needed": _round(self.log.gain_needed(e, served=served, last=last))}
            for e in names}}


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)
