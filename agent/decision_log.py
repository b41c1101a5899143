"""The daemon's recent routing decisions, in memory: what ``/health``, ``edgeroute doctor``
and the dashboard show of how traffic splits, and why an expert is never chosen.

A bounded ring of names and numbers; no prompt text unless ``text_chars`` is set (the
``server.dashboard_prompts`` setting: the head of each routed query, in memory only, for
the dashboard's recent decisions). Each record says whether
the decision served an answer or only answered ``/v1/route``, whether the router chose
(``model: auto``) or the client named the expert, and the utility of every feasible expert,
so "gpt-4 took none of the last 200" comes with what it lacked: the P(correct) points its
score would have needed (:meth:`DecisionLog.gain_needed`).
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.policy import Decision


def new_completion_id() -> str:
    """The id one decision, its reply (``chatcmpl-...``) and any later feedback share."""
    return "chatcmpl-" + uuid.uuid4().hex[:24]


@dataclass
class DecisionRecord:
    id: int
    at: float
    expert: str  # who was chosen ("" refused)
    served: bool  # False: a route-only call
    auto: bool  # the router chose (the client did not name the expert)
    mode: str
    reason: str
    p_correct: float | None
    expected_cost_usd: float
    utilities: Mapping[str, float]
    costs: Mapping[str, float]  # every expert's expected cost of this request
    completion_id: str = ""
    answered_by: str | None = None  # after a fallback, who answered
    latency_s: float | None = None  # the answer's wall time
    cost_usd: float | None = None  # what the ledger settled
    query: str | None = None  # the routed text's head, only when the log keeps text

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "completion_id": self.completion_id, "at": round(self.at, 3),
                "expert": self.expert or None,
                "served": self.served, "auto": self.auto, "mode": self.mode,
                "reason": self.reason, "p_correct": self.p_correct,
                "expected_cost_usd": round(self.expected_cost_usd, 8),
                "answered_by": self.answered_by, "latency_s": self.latency_s,
                "cost_usd": self.cost_usd}


@dataclass
class DecisionLog:
    capacity: int = 1000
    text_chars: int = 0  # how much of each routed query to keep (0: none)
    _records: deque[DecisionRecord] = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _next: int = 0

    def __post_init__(self) -> None:
        self._records = deque(maxlen=self.capacity)

    def record(self, decision: Decision, *, served: bool, auto: bool,
               now: float | None = None, text: str | None = None) -> DecisionRecord:
        """``text``: the routed query, kept (its first ``text_chars``) only if set."""
        utilities = {n: a.utility for n, a in decision.assessed.items()
                     if a.utility is not None}
        costs = {n: a.expected_cost_usd for n, a in decision.assessed.items()}
        with self._lock:
            self._next += 1
            rec = DecisionRecord(self._next, time.time() if now is None else now,
                                 decision.expert, served, auto, decision.mode, decision.reason,
                                 decision.expected_quality, decision.expected_cost_usd,
                                 utilities, costs, decision.id,
                                 query=text[:self.text_chars] if text and self.text_chars
                                 else None)
            self._records.append(rec)
        return rec

    def finish(self, completion_id: str, answered_by: str, latency_s: float,
               cost_usd: float) -> DecisionRecord | None:
        """What the decision's answer turned out to be (its record, if still kept)."""
        if not completion_id:
            return None
        with self._lock:
            for rec in reversed(self._records):
                if rec.completion_id == completion_id:
                    rec.answered_by = answered_by
                    rec.latency_s = round(latency_s, 4)
                    rec.cost_usd = round(cost_usd, 8)
                    return rec
        return None

    def records(self, *, served: bool | None = None, auto: bool | None = None,
                last: int | None = None) -> list[DecisionRecord]:
        """The newest ``last`` records that match, oldest first."""
        with self._lock:
            found = [r for r in self._records
                     if (served is None or r.served == served)
                     and (auto is None or r.auto == auto)]
        return found[-last:] if last else found

    def shares(self, experts: list[str], *, served: bool | None = True,
               last: int | None = None) -> tuple[int, dict[str, float]]:
        """How many router decisions (``auto``) there were, and each expert's share."""
        recs = [r for r in self.records(served=served, auto=True, last=last) if r.expert]
        n = len(recs)
        return n, {e: (sum(r.expert == e for r in recs) / n if n else 0.0) for e in experts}

    def mean_cost(self, expert: str, *, served: bool | None = True,
                  last: int | None = None) -> float | None:
        """``expert``'s mean expected cost over the recent router decisions (chosen or not):
        what a query would cost on it."""
        costs = [r.costs[expert] for r in self.records(served=served, auto=True, last=last)
                 if expert in r.costs]
        return sum(costs) / len(costs) if costs else None

    def gain_needed(self, expert: str, *, served: bool | None = True,
                    last: int | None = None) -> float | None:
        """Median over the router's recent decisions where ``expert`` was feasible and not
        chosen of how much higher its P(correct) would have had to be to be chosen."""
        gaps = [r.utilities[r.expert] - r.utilities[expert]
                for r in self.records(served=served, auto=True, last=last)
                if r.expert and r.expert != expert and expert in r.utilities
                and r.expert in r.utilities]
        return statistics.median(gaps) if gaps else None
