"""The one path every answer takes, plain or streamed: admit, reserve, call, fall back,
settle.

    decision --> admit: a slot of the expert that is about to answer (its bounded queue;
                 full or waited too long: HTTP 503 with Retry-After)
             --> reserve: a cloud call's worst case in the ledger (a lost race: fall back,
                 or HTTP 429 with budget.on_exceeded=refuse)
             --> call: the expert's ``complete`` or ``stream``
             --> fail before a byte left: the first local expert answers, admitted in
                 *its* own queue (the expert that answers is the one charged)
             --> settle: the real usage (and whether it is an estimate), or release

What happens after an expert could not answer is decided in :meth:`Dispatcher.next_expert`
and nowhere else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Protocol

from agent.admission import Admission, Slot
from agent.decision_log import DecisionLog
from agent.errors import ExpertCallError, ExpertUnavailableError
from agent.expert_stats import ExpertStats
from agent.experts.base import Expert, Message
from agent.ledger import BudgetExceededError, SpendLedger
from agent.metrics import Metrics
from agent.policy import Decision, lacks_capability
from cloud_bridge.usage import TokenUsage
from cloud_bridge.wire import SamplingParams, StreamPiece

log = logging.getLogger("edgeroute.dispatch")


def routable(expert: Expert) -> bool:
    """Whether the policy may pick ``expert`` now. An expert that must not fall back stays
    routable while its breaker is open, so a request naming it fails as configured (503
    with Retry-After) instead of being answered elsewhere without a word."""
    return expert.available() or not expert.info.fallback_to_local


def billed(usage: TokenUsage, prompt_bound: int) -> TokenUsage:
    """The usage a ledger settles: one the bridge counted (the peer sent none) guesses the
    prompt from its characters, so the prompt's upper bound is billed instead."""
    if usage.estimated:
        return TokenUsage(max(usage.prompt_tokens, prompt_bound), usage.completion_tokens,
                          estimated=True)
    return usage


class AnswerSink(Protocol):
    """Told of every whole answer, once (``agent.outcome_recorder``: the outcomes store)."""

    def answered(self, decision: Decision, messages: list[Message], content: str,
                 finish_reason: str | None) -> None: ...


@dataclass
class _Turn:
    """One expert's turn at a request: its admission slot and its ledger row."""

    decision: Decision  # its prompt_bound bills a usage the peer did not send
    slot: Slot
    row: int | None
    started: float = field(default_factory=time.perf_counter)


@dataclass
class Dispatcher:
    experts: dict[str, Expert]
    ledger: SpendLedger
    metrics: Metrics
    admission: Admission
    fallback_expert: str  # offline-first: the first local expert
    on_exceeded: str  # budget.on_exceeded: "local" or "refuse"
    stats: ExpertStats  # what each answer teaches the policy (latency, answer length)
    log: DecisionLog | None = None  # each answer's outcome joins its decision's record
    sink: AnswerSink | None = None  # each whole answer, for the outcomes store

    async def run(
        self, decision: Decision, messages: list[Message], params: SamplingParams, *,
        stream: bool, fallback: bool = True,
    ) -> AsyncGenerator[tuple[StreamPiece, Decision], None]:
        """Pieces of the answer with the decision that produced them (after a fallback,
        the fallback's). A plain call yields its whole answer as one final piece.
        ``fallback=False`` (a cascade's escalation, which holds a local answer already):
        a failed call or a lost budget raises instead of asking the local expert again."""
        while True:
            turn = await self._begin(decision, fallback)
            decision = turn.decision
            sent = False
            parts: list[str] = []
            try:
                async for piece in self._call(decision.expert, messages, params, stream):
                    parts.append(piece.content)
                    if piece.usage is not None:
                        self._settle(turn, piece, params.max_tokens)
                        if self.sink is not None:
                            self.sink.answered(decision, messages, "".join(parts),
                                               piece.finish_reason)
                    sent = True
                    yield piece, decision
                return
            except ExpertCallError as exc:
                self._close_failed(turn, exc)
                if not fallback:
                    raise
                decision = self.next_expert(decision, exc, sent=sent)
            finally:
                turn.slot.release()
                if turn.row is not None:  # the client left before usage came: the worst
                    self.ledger.settle_worst_case(turn.row)

    def next_expert(self, decision: Decision, exc: ExpertCallError | BudgetExceededError, *,
                    sent: bool = False) -> Decision:
        """After ``decision.expert`` could not answer: the fallback decision, or raise.

        No fallback once bytes reached the client (the stream ends with an in-band error),
        from the fallback expert itself, or from an expert whose ``fallback_to_local`` is
        off (HTTP 503). A budget lost to a concurrent request falls back unless the budget
        says refuse (HTTP 429).
        """
        if isinstance(exc, BudgetExceededError):
            if self.on_exceeded == "refuse":
                self.metrics.refusals.labels("budget").inc()
                raise exc
            reason = exc.message
        else:
            if sent or exc.partial or decision.expert == self.fallback_expert:
                raise exc
            lacks = decision.rejected.get(self.fallback_expert)
            if lacks_capability(lacks):  # it would answer without what the client asked for
                raise ExpertUnavailableError(
                    f"expert {decision.expert!r} failed ({exc.reason}) and the fallback "
                    f"expert {self.fallback_expert!r} {lacks}", retry_after_s=exc.retry_after_s
                    or 5) from exc
            if not self.experts[decision.expert].info.fallback_to_local:
                raise ExpertUnavailableError(
                    f"cloud expert {decision.expert!r} failed and fallback_to_local is off: "
                    f"{exc.reason}", retry_after_s=exc.retry_after_s) from exc
            reason = exc.reason
        log.warning("expert %s cannot answer (%s); falling back to %s", decision.expert,
                    reason, self.fallback_expert)
        self.metrics.fallbacks.labels(decision.expert, self.fallback_expert).inc()
        fallback = decision.assessed.get(self.fallback_expert)
        return replace(decision, expert=self.fallback_expert, reason=f"fallback: {reason}",
                       fallback_from=decision.expert,
                       expected_quality=decision.scores.get(self.fallback_expert),
                       expected_cost_usd=0.0, worst_case_usd=0.0,
                       expected_latency_s=fallback.latency_s if fallback else None)

    # -- the steps ------------------------------------------------------------------------
    async def _begin(self, decision: Decision, fallback: bool = True) -> _Turn:
        """Admit, then reserve a cloud call's worst case. The slot is the answering
        expert's: a fallback after a lost budget race queues for the local expert."""
        slot = await self.admission.acquire(decision.expert)
        if self.experts[decision.expert].info.kind != "cloud":
            return _Turn(decision, slot, None)
        try:
            row = self.ledger.reserve(decision.expert, decision.worst_case_usd)
        except BudgetExceededError as exc:
            slot.release()
            if not fallback:
                raise
            return await self._begin(self.next_expert(decision, exc))
        return _Turn(decision, slot, row)

    async def _call(self, name: str, messages: list[Message], params: SamplingParams,
                    stream: bool) -> AsyncIterator[StreamPiece]:
        expert = self.experts[name]
        if stream:
            async for piece in expert.stream(messages, params):
                yield piece
            return
        yield (await expert.complete(messages, params)).as_piece()

    def _bill(self, turn: _Turn, usage: TokenUsage) -> float:
        """Settle the row at the usage :func:`billed` says."""
        assert turn.row is not None
        usage = billed(usage, turn.decision.prompt_bound)
        cost = self.experts[turn.decision.expert].info.prices.cost_usd(usage)
        self.ledger.settle(turn.row, cost, usage.prompt_tokens, usage.completion_tokens,
                           usage.estimated)
        turn.row = None
        self.metrics.spend.labels(turn.decision.expert).inc(cost)
        return cost

    def _settle(self, turn: _Turn, last: StreamPiece, max_tokens: int) -> None:
        """The answer is whole: bill it, and let its latency and length teach the policy
        (an answer cut at max_tokens only says the full one is longer)."""
        assert last.usage is not None
        d = turn.decision
        info = self.experts[d.expert].info
        cost = 0.0
        if turn.row is not None:
            cost = self._bill(turn, last.usage)
            left = self.ledger.remaining(info.name)
            if left is not None:
                self.metrics.budget_left.labels(info.name).set(left)
        elapsed = time.perf_counter() - turn.started
        self.stats.observe(info.name, elapsed, tokens=last.usage.completion_tokens,
                           cut=last.finish_reason == "length"
                           or last.usage.completion_tokens >= max_tokens,
                           model=d.lengths.get(info.name),
                           u=d.query.u if d.query is not None else None)
        self.metrics.requests.labels(info.name).inc()
        self.metrics.latency.labels(info.name).observe(elapsed)
        if self.log is not None:
            self.log.finish(d.id, info.name, elapsed, cost)

    def _close_failed(self, turn: _Turn, exc: ExpertCallError) -> None:
        """A failed call's row: billed for what it consumed after bytes flowed, else
        released (the peer answered nothing it can bill)."""
        if turn.row is None:
            return
        if exc.partial and exc.usage is not None:
            self._bill(turn, exc.usage)
        else:
            self.ledger.release(turn.row)
            turn.row = None
