"""The local-first cascade as the daemon serves it: whether to try a local expert before the
decision's cloud expert (the pure rules in :mod:`agent.cascade`), the local attempt, and the
escalation when its answer is not confident. Every call goes through the one dispatch
routine the runtime hands in (``serve``), so admission, budgets, fallback and the outcome
row are the same as for any answer; the ledger sees only the cloud call.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

from agent.cascade import CascadeRule, first_local, keep_local
from agent.decider import Hints
from agent.errors import ExpertCallError, ExpertUnavailableError
from agent.expert_stats import ExpertStats
from agent.experts.base import Message
from agent.ledger import BudgetExceededError
from agent.metrics import Metrics
from agent.policy import Decision
from agent.settings import PolicySettings
from cloud_bridge.wire import ChatResult, SamplingParams

# One whole answer through dispatch: (decision, messages, params, fallback allowed).
Serve = Callable[[Decision, list[Message], SamplingParams, bool],
                 Awaitable[tuple[ChatResult, Decision]]]


@dataclass
class Cascade:
    policy: PolicySettings
    kinds: Mapping[str, str]  # expert -> "local" | "cloud"
    stats: ExpertStats
    metrics: Metrics
    serve: Serve

    def rule(self) -> CascadeRule:
        p = self.policy
        return CascadeRule(p.cascade_band, p.cascade_threshold, p.cascade_signal)

    def first(self, decision: Decision, params: SamplingParams, requested: bool,
              hints: Hints | None = None, *, stream: bool = False) -> tuple[str | None, Decision]:
        """The local expert to try before the decision's cloud expert (or None), and the
        decision. Tried when the cascade is on (the request's ``edgeroute.cascade``, else
        the setting), the router chose (no expert named), the reply is plain text (no
        tools, no JSON mode: a local answer's confidence is about text), and a stream only
        with ``cascade_stream``. Cascade on but not tried: the decision says why in its
        ``cascade`` (``tried: false``, ``skipped``), so every reply shows the cascade."""
        p = self.policy
        hints = hints or Hints()
        if not (p.cascade if hints.cascade is None else hints.cascade):
            return None, decision
        local, why = None, ("named expert" if requested
                            else "tools/json mode" if params.tools or params.json_mode
                            else "stream without cascade_stream"
                            if stream and not p.cascade_stream else None)
        if why is None:
            local, why = first_local(decision, self.kinds, p.cascade_band)
        if local is not None:
            return local, decision
        return None, replace(decision, cascade={"tried": False, "skipped": why})

    async def run(self, decision: Decision, local: str, messages: list[Message],
                  params: SamplingParams) -> tuple[ChatResult, Decision]:
        """Answer with ``local`` first; keep it when confident, else ask the decision's
        cloud expert. An escalation that a budget refuses, or that fails, keeps the local
        answer and says so."""
        rule = self.rule()
        attempt = replace(decision, expert=local, expected_cost_usd=0.0, worst_case_usd=0.0,
                          expected_quality=decision.scores.get(local),
                          expected_latency_s=self.stats.latency_s.get(local),
                          reason=f"cascade: {local} first, {decision.expert} if unsure")
        started = time.perf_counter()
        info: dict[str, object] = {
            "tried": True, "local_expert": local, "cloud_expert": decision.expert,
            "signal": rule.signal, "threshold": rule.threshold, "band": rule.band}
        try:
            answer, by = await self.serve(attempt, messages, params, True)
        except (ExpertCallError, ExpertUnavailableError) as exc:  # busy or failed: the cloud
            info |= {"confidence": None, "note": f"local attempt failed ({exc})",
                     "local_latency_s": round(time.perf_counter() - started, 4)}
            cloud, cdec = await self.serve(decision, messages, params, True)
            return cloud, self._ended(cdec, info, "escalated")
        conf = answer.confidence
        info |= {"local_expert": by.expert,
                 "confidence": conf.as_dict() if conf is not None else None,
                 "local_latency_s": round(time.perf_counter() - started, 4),
                 "local_finish_reason": answer.finish_reason}
        value = getattr(conf, rule.signal) if conf is not None else None
        if keep_local(value, answer.finish_reason, rule):
            return answer, self._ended(by, info, "kept")
        try:
            cloud, cdec = await self.serve(decision, messages, params, False)
        except BudgetExceededError as exc:
            info["note"] = (f"escalation to {decision.expert} would break a budget "
                            f"({exc.message}); kept the local answer")
            return answer, self._ended(by, info, "kept_over_budget")
        except (ExpertCallError, ExpertUnavailableError) as exc:
            info["note"] = f"escalation to {decision.expert} failed ({exc}); kept the local answer"
            return answer, self._ended(by, info, "kept_cloud_failed")
        return cloud, self._ended(cdec, info, "escalated")

    def _ended(self, by: Decision, info: dict[str, object], outcome: str) -> Decision:
        self.metrics.cascade.labels(outcome).inc()
        return replace(by, cascade={**info, "outcome": outcome})
