"""Budgeted shadow grading: a share of the router's answered queries is, after the reply,
also answered by a reference expert and both answers are graded by a judge expert against a
fixed rubric, giving an outcome for the expert that answered and one for the reference.

Why: feedback only ever scores the expert that was chosen, so an expert the router
under-rates is never chosen and never corrected; the reference's shadow answers score it on
queries it did not get. Why a judge: a user's query has no reference answer to grade by.

    answer whole (dispatch) --> sampled? (a hash of the completion id < shadow_share)
        --> background task, at most ``shadow_max_inflight`` at once (else skipped)
        --> reference answers (reserved in the shadow ledger, its own cap, and in the
            spend ledger, under every budget cap; settled to the real usage)
        --> judge grades both (reserved once the reference's answer is known, so the
            reservation bounds the judge's prompt)
        --> two ``shadow`` outcomes in the outcomes store

The user's answer never waits on any of it, and a refused reservation, a failed call or an
unreadable grade drops the grading (counted on /metrics), never the answer. The shadow
ledger is a :class:`agent.ledger.Ledger` of its own (``<data_dir>/shadow-ledger.sqlite3``)
whose caps are ``outcomes.shadow_daily_usd`` / ``shadow_monthly_usd``: concurrent gradings
cannot reserve past it together, as user calls cannot past theirs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.dispatch import billed
from agent.errors import ExpertCallError
from agent.experts.base import Expert, Message
from agent.ledger import BudgetExceededError, Caps, Ledger, SpendLedger
from agent.metrics import Metrics
from agent.outcomes import OutcomeStore
from agent.outcomes_settings import OutcomesSettings
from agent.prompt_size import prompt_size
from cloud_bridge.wire import ChatResult, SamplingParams

log = logging.getLogger("edgeroute.shadow")

SHADOW_LEDGER_NAME = "shadow-ledger.sqlite3"
RUBRIC_VERSION = "edgeroute-judge/1"
RUBRIC = (
    "You grade answers to a user's question. Rubric, the same for every answer: 10 = correct "
    "and answers what was asked; 7 = correct but incomplete or with a minor error; 4 = "
    "partly correct, or right with wrong reasoning; 0 = wrong, off-topic, a refusal or no "
    "answer. Judge correctness only, not style or length; do not favour an answer for its "
    "position.")
JUDGE_MAX_TOKENS = 64
MAX_QUESTION_CHARS = 8000
# What the judge's reservation assumes of the reference's answer before it exists: bytes per
# token (English BPE text runs ~4); a longer answer is reserved again, exactly, once known.
ANSWER_BYTES_PER_TOKEN = 8
_SCORE_LINE = re.compile(r"answer\s*(\d)\s*[:=]\s*(\d+(?:\.\d+)?)", re.I)


def judge_messages(question: str, answers: list[str]) -> list[Message]:
    """The judge's chat: the rubric, the question, the answers numbered from 1."""
    body = [f"Question:\n<<<\n{question[:MAX_QUESTION_CHARS]}\n>>>"]
    body += [f"Answer {i}:\n<<<\n{a}\n>>>" for i, a in enumerate(answers, start=1)]
    body.append(f'Reply with JSON only: {{"scores": [{", ".join(["0-10"] * len(answers))}]}}, '
                "one integer per answer, in order.")
    return [{"role": "system", "content": RUBRIC}, {"role": "user", "content": "\n\n".join(body)}]


def judge_format(n: int, kind: str = "json_schema") -> dict[str, Any] | None:
    """The judge's ``response_format``: a JSON schema of the grades (a server that
    constrains sampling by it always answers it), as OpenAI's structured outputs take it
    (``json_schema``) or as llama.cpp's server does (``json_object`` with a ``schema``);
    ``none``: no response_format."""
    schema = {"type": "object", "additionalProperties": False, "required": ["scores"],
              "properties": {"scores": {"type": "array", "minItems": n, "maxItems": n,
                                        "items": {"type": "integer", "minimum": 0,
                                                  "maximum": 10}}}}
    if kind == "none":
        return None
    if kind == "json_object":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": "grades", "strict": True,
                                                   "schema": schema}}


def parse_grades(text: str, n: int) -> list[float] | None:
    """Each answer's grade in [0, 1] from the judge's reply ({"scores": [...]}, else lines
    "Answer 1: 7"); None when it holds no grade for every answer."""
    grades: list[float] | None = None
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            raw = json.loads(text[start:end + 1]).get("scores")
            if isinstance(raw, list) and len(raw) == n:
                grades = [float(x) for x in raw]
        except (ValueError, TypeError, AttributeError):
            grades = None
    if grades is None:
        found = {int(m.group(1)): float(m.group(2)) for m in _SCORE_LINE.finditer(text)}
        if all(i in found for i in range(1, n + 1)):
            grades = [found[i] for i in range(1, n + 1)]
    if grades is None or not all(0 <= g <= 10 for g in grades):
        return None
    return [g / 10.0 for g in grades]


def share_point(completion_id: str) -> float:
    """Where an id falls in [0, 1): sampled when below ``shadow_share`` (no RNG state, the
    same id is sampled the same way in every process)."""
    return int(hashlib.sha256(completion_id.encode()).hexdigest()[:12], 16) / 16**12


class _Skip(Exception):
    """A grading that stops early; its reason is the metric's label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ShadowGrader:
    settings: OutcomesSettings
    experts: Mapping[str, Expert]
    ledger: SpendLedger  # the device's: every budget cap applies to shadow calls too
    budget: Ledger  # shadow grading's own cap
    store: OutcomeStore
    metrics: Metrics
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @classmethod
    def of(cls, settings: Any, experts: Mapping[str, Expert], ledger: SpendLedger,
           store: OutcomeStore, metrics: Metrics) -> ShadowGrader | None:
        o = settings.outcomes
        if o.shadow_share <= 0:
            return None
        caps = Caps(daily_usd=o.shadow_daily_usd, monthly_usd=o.shadow_monthly_usd)
        return cls(o, experts, ledger, Ledger(Path(settings.paths.data_dir) / SHADOW_LEDGER_NAME,
                                              caps), store, metrics)

    @property
    def inflight(self) -> int:
        return len(self._tasks)

    def wants(self, completion_id: str) -> bool:
        return bool(completion_id) and share_point(completion_id) < self.settings.shadow_share

    def submit(self, completion_id: str, answered_by: str, messages: list[Message],
               question: str, answer: str) -> bool:
        """Grade in the background (call from the event loop); False: skipped, busy."""
        if self.inflight >= self.settings.shadow_max_inflight:
            self.metrics.shadow_skipped.labels("busy").inc()
            return False
        task = asyncio.get_running_loop().create_task(
            self._grade(completion_id, answered_by, messages, question, answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def drain(self) -> None:
        """Wait for the gradings in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.drain()
        self.budget.close()

    async def _grade(self, cid: str, answered_by: str, messages: list[Message], question: str,
                     answer: str) -> None:
        await asyncio.sleep(0)  # the reply goes out first
        rows: dict[str, tuple[int, int] | None] = {}
        try:
            await self._grade_reserved(cid, answered_by, messages, question, answer, rows)
        except _Skip as skip:
            self.metrics.shadow_skipped.labels(skip.reason).inc()
        except Exception:  # noqa: BLE001 - a background grading never takes the daemon down
            log.exception("shadow grading of %s failed", cid)
            self.metrics.shadow_skipped.labels("failed").inc()
        finally:
            for held in rows.values():  # reserved, never called: nothing was billed
                if held is not None:
                    self.budget.release(held[0])
                    self.ledger.release(held[1])

    async def _grade_reserved(self, cid: str, answered_by: str, messages: list[Message],
                              question: str, answer: str,
                              rows: dict[str, tuple[int, int] | None]) -> None:
        """Both calls are reserved before the first is made (the judge's from a bound of
        the reference's answer), so a grading the cap cannot finish spends nothing."""
        ref, judge = str(self.settings.shadow_reference), str(self.settings.shadow_judge)
        ref_params = SamplingParams(max_tokens=self.settings.shadow_max_tokens, temperature=0.0)
        shown = [answer] if answered_by == ref else [answer, "x" * ANSWER_BYTES_PER_TOKEN
                                                     * self.settings.shadow_max_tokens]
        fmt = self.settings.shadow_judge_format if self.experts[judge].info.json_mode else "none"
        judge_params = SamplingParams(max_tokens=JUDGE_MAX_TOKENS, temperature=0.0,
                                      response_format=judge_format(len(shown), fmt))
        bounds = {"judge": self._worst(judge, judge_messages(question, shown), judge_params)}
        if answered_by != ref:
            bounds["reference"] = self._worst(ref, messages, ref_params)
        for role, (name, worst) in bounds.items():
            rows[role] = self._reserve(role, name, worst)
        answers, graded = [answer], [answered_by]
        if answered_by != ref:
            reply = await self._call("reference", ref, messages, ref_params, rows)
            answers.append(reply.content)
            graded.append(ref)
        order = list(range(len(answers)))
        if len(order) == 2 and int(hashlib.sha256(cid.encode()).hexdigest()[-1], 16) % 2:
            order.reverse()  # the user's answer first on half the queries: no position bias
        asked = judge_messages(question, [answers[i] for i in order])
        if self._worst(judge, asked, judge_params)[1] > bounds["judge"][1]:  # a long answer
            held = rows.pop("judge")
            if held is not None:
                self.budget.release(held[0])
                self.ledger.release(held[1])
            rows["judge"] = self._reserve("judge", judge, self._worst(judge, asked,
                                                                      judge_params)[1])
        verdict = await self._call("judge", judge, asked, judge_params, rows)
        grades = parse_grades(verdict.content, len(order))
        if grades is None:
            raise _Skip("unparsed")
        for pos, i in enumerate(order):
            self.store.add_outcome(cid, "shadow", grades[pos], self.settings.shadow_weight,
                                   expert=graded[i])
            self.metrics.outcomes.labels("shadow").inc()

    def _worst(self, name: str, messages: list[Message],
               params: SamplingParams) -> tuple[str, float]:
        """(expert, the most this call can cost): its prompt's upper bound plus max_tokens."""
        info = self.experts[name].info
        return name, info.prices.usd(prompt_size(messages).upper_bound, params.max_tokens)

    async def _call(self, role: str, name: str, messages: list[Message],
                    params: SamplingParams,
                    rows: dict[str, tuple[int, int] | None]) -> ChatResult:
        """One shadow call on its reservation (``rows[role]``), settled or released."""
        expert = self.experts[name]
        bound = prompt_size(messages).upper_bound
        held = rows.pop(role)
        try:
            result = await expert.complete(messages, params)
        except ExpertCallError as exc:
            self.metrics.shadow_calls.labels(role, "failed").inc()
            if held is not None:
                if exc.partial and exc.usage is not None:
                    self._settle(held, name, billed(exc.usage, bound))
                else:
                    self.budget.release(held[0])
                    self.ledger.release(held[1])
            raise _Skip("failed") from exc
        except BaseException:
            if held is not None:  # cancelled mid-call: whether it billed is unknowable
                self.budget.settle_worst_case(held[0])
                self.ledger.settle_worst_case(held[1])
            raise
        if held is not None:
            self._settle(held, name, billed(result.usage, bound))
        self.metrics.shadow_calls.labels(role, "ok").inc()
        return result

    def _reserve(self, role: str, name: str, worst: float) -> tuple[int, int] | None:
        """Rows in the shadow ledger and the spend ledger (None: a local expert, free)."""
        if self.experts[name].info.kind != "cloud":
            return None
        try:
            own = self.budget.reserve(name, worst)
        except BudgetExceededError as exc:
            self.metrics.shadow_calls.labels(role, "over_budget").inc()
            raise _Skip("over_budget") from exc
        try:
            return own, self.ledger.reserve(name, worst)
        except BudgetExceededError as exc:
            self.budget.release(own)
            self.metrics.shadow_calls.labels(role, "over_budget").inc()
            raise _Skip("over_budget") from exc

    def _settle(self, rows: tuple[int, int], name: str, usage: Any) -> None:
        cost = self.experts[name].info.prices.cost_usd(usage)
        for ledger, row in ((self.budget, rows[0]), (self.ledger, rows[1])):
            ledger.settle(row, cost, usage.prompt_tokens, usage.completion_tokens,
                          usage.estimated)
        self.metrics.shadow_spend.labels(name).inc(cost)
