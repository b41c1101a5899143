"""What the request path tells the outcomes store, once per answer, and the feedback a
client sends later: the daemon's one writer of ``agent.outcomes``.

``Dispatcher`` calls :meth:`OutcomeRecorder.answered` where an answer is whole (its usage
arrived): the answer's row (completion id, expert, u(q), d(q); text only with
``outcomes.store_text``), a reference-free check's outcome where one applies
(``agent.answer_checks``), and, for a sampled share, a shadow grading after the reply
(``agent.shadow``). Only answers the router scored are kept: a named expert's request has
no u(q), so it could not refit anything. A cascade's local attempt is an answer too (its
check and shadow grade are about the local expert); the reply's expert is the one a
feedback score goes to.

Nothing here may fail a request: a store that cannot be written is logged, the answer
stands.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.answer_checks import check
from agent.experts.base import Message
from agent.metrics import Metrics
from agent.outcomes import OutcomeStore
from agent.outcomes_settings import OutcomesSettings
from agent.policy import Decision
from agent.routing import query_text
from agent.shadow import ShadowGrader

log = logging.getLogger("edgeroute.outcomes")

THUMBS = {"up": 1.0, "down": 0.0}


def _one_of_schema(schema: dict[str, Any]) -> None:
    props = schema["properties"]
    props["score"] = {"type": "number", "minimum": 0, "maximum": 1,
                      "description": props["score"].get("description", "")}
    props["thumbs"] = {"type": "string", "enum": ["up", "down"],
                       "description": props["thumbs"].get("description", "")}
    schema["oneOf"] = [{"required": ["score"]}, {"required": ["thumbs"]}]


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: a completion id (a reply's ``id``, or a route call's) and
    either a score in [0, 1] or a thumb."""

    # The schema says what the handler takes: exactly one of score and thumbs, neither null.
    model_config = ConfigDict(extra="forbid", json_schema_extra=lambda s: _one_of_schema(s))

    id: str = Field(min_length=1, max_length=128, description="The reply's id (chatcmpl-...).")
    score: float | None = Field(None, ge=0, le=1, description="How good the answer was, 0-1.")
    thumbs: Literal["up", "down"] | None = Field(None, description="Or: up (1) or down (0).")

    @field_validator("score", "thumbs", mode="before")
    @classmethod
    def _not_null(cls, v: Any) -> Any:
        # Run only for a value the body gives: leave it out, or give a real one. Which of
        # the two is given (exactly one) is the handler's check, naming ``score``.
        if v is None:
            raise ValueError("leave the field out rather than null")
        return v


@dataclass
class OutcomeRecorder:
    settings: OutcomesSettings
    store: OutcomeStore
    metrics: Metrics
    shadow: ShadowGrader | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @classmethod
    def of(cls, settings: Any, experts: Any, ledger: Any, metrics: Metrics
           ) -> OutcomeRecorder | None:
        """The daemon's recorder (None: ``outcomes.enabled`` is off)."""
        if not settings.outcomes.enabled:
            return None
        store = OutcomeStore.of(settings)
        return cls(settings.outcomes, store, metrics,
                   ShadowGrader.of(settings, experts, ledger, store, metrics))

    # -- the request path -----------------------------------------------------------------
    def routed(self, decision: Decision) -> None:
        """A route-only decision: kept (``record_route_calls``) so that a client that
        calls the expert itself can send its outcome with the route call's id."""
        if self.settings.record_route_calls and decision.query is not None and decision.id:
            self._write(lambda: self.store.record_answer(decision.id, decision.expert,
                                                         decision.query, served=False))

    def answered(self, decision: Decision, messages: list[Message], content: str,
                 finish_reason: str | None) -> None:
        """One whole answer (``agent.dispatch.AnswerSink``)."""
        features = decision.query
        if features is None or not decision.id:
            return
        question = query_text(messages)
        text = self.settings.store_text
        if not self._write(lambda: self.store.record_answer(
                decision.id, decision.expert, features, served=True,
                prompt=question if text else None, answer=content if text else None)):
            return
        if self.settings.checks:
            self._check(decision.id, decision.expert, question, content)
        if self.shadow is not None and self.shadow.wants(decision.id):
            self.shadow.submit(decision.id, decision.expert, messages, question, content)

    def _check(self, cid: str, expert: str, question: str, content: str) -> None:
        if not self.settings.check_run_code:
            self._store_check(cid, expert, check(question, content))
            return

        async def run() -> None:  # a subprocess: off the event loop, after the reply
            self._store_check(cid, expert, await asyncio.to_thread(
                check, question, content, run_code=True))

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _store_check(self, cid: str, expert: str, result: Any) -> None:
        if result is None:
            return
        if self._write(lambda: self.store.add_outcome(cid, "check", result.score,
                                                      self.settings.check_weight,
                                                      expert=expert)):
            self.metrics.outcomes.labels("check").inc()

    def _write(self, op: Any) -> bool:
        try:
            op()
        except sqlite3.Error as exc:
            log.warning("outcomes store %s not written: %s", self.store.path, exc)
            return False
        return True

    # -- feedback -----------------------------------------------------------------------------
    def feedback(self, completion_id: str, score: float) -> dict[str, Any]:
        """Score an answer (POST /v1/feedback); raises UnknownCompletionError (404)."""
        expert, replaced = self.store.add_outcome(completion_id, "feedback", score,
                                                  self.settings.feedback_weight)
        self.metrics.feedback.labels(str(replaced).lower()).inc()
        self.metrics.outcomes.labels("feedback").inc()
        return {"object": "edgeroute.feedback", "id": completion_id, "expert": expert,
                "score": score, "replaced": replaced}

    def describe(self) -> dict[str, Any]:
        """/health's ``outcomes``: per expert, and the last refit."""
        out = self.store.summary()
        out["sources"] = {"feedback": self.settings.feedback, "checks": self.settings.checks,
                          "shadow_share": self.settings.shadow_share,
                          "refit_every_s": self.settings.refit_every_s}
        if self.shadow is not None:
            out["shadow"] = {"inflight": self.shadow.inflight,
                             "spend": self.shadow.budget.usage()["total"]}
        return out

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.shadow is not None:
            await self.shadow.drain()

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.shadow is not None:
            await self.shadow.aclose()
        self.store.close()


def feedback_score(score: float | None, thumbs: str | None) -> float:
    """One score in [0, 1] from a score or a thumb (exactly one of them; ValueError)."""
    if (score is None) == (thumbs is None):
        raise ValueError("give exactly one of score (0 to 1) and thumbs ('up' or 'down')")
    if thumbs is not None:
        if thumbs not in THUMBS:
            raise ValueError(f"thumbs must be 'up' or 'down', got {thumbs!r}")
        return THUMBS[thumbs]
    assert score is not None
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"score must be between 0 and 1, got {score}")
    return float(score)
