"""The request path without a model: ``Runtime.complete``/``stream`` and the ``Dispatcher``
behind them (admit, reserve, call, fall back, settle, release), driven in-process against a
real SQLite spend ledger in the test's temp dir. Milliseconds, no GGUF.

The experts are :class:`ScriptedExpert`: a real implementation of the ``Expert``
interface written for these tests, which answers from a fixed script instead of a model
(named as such: its answers are the script's, never generated). A script step fails on
demand before the first byte, or after some, the conditions a real peer cannot be made
to produce when a test wants them.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from agent.answer_length import LengthModel
from agent.errors import ExpertCallError, ExpertUnavailableError
from agent.experts.base import Expert, Message
from agent.experts.info import ExpertInfo
from agent.ledger import BudgetExceededError, Caps, Ledger
from agent.policy import Decision
from agent.routing import FixedRouter
from agent.runtime import Runtime, build_admission
from agent.settings import Settings
from cloud_bridge.usage import Prices, TokenUsage
from cloud_bridge.wire import ChatResult, SamplingParams, StreamPiece

pytestmark = pytest.mark.anyio

MESSAGES: list[Message] = [{"role": "user", "content": "What is two plus two?"}]
PARAMS = SamplingParams(max_tokens=16, temperature=0.0)
IN_USD, OUT_USD = 2.5, 10.0  # the cloud expert's published prices per million tokens
DAILY_CAP = 1.0


@dataclass(frozen=True)
class Say:
    """Answer with these pieces; the last carries ``usage`` (after ``delay_s``)."""

    pieces: tuple[str, ...]
    usage: TokenUsage
    delay_s: float = 0.0
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Fail:
    """Fail with ``reason`` after streaming ``sent`` (empty: before the first byte);
    ``usage``: what the peer consumed up to then."""

    reason: str
    sent: tuple[str, ...] = ()
    usage: TokenUsage | None = None


class ScriptedExpert:
    """An ``Expert`` that answers from a fixed script, one step per call, not a model.
    ``calls`` counts the calls it took, so a test sees who was asked."""

    def __init__(self, info: ExpertInfo, *script: Say | Fail) -> None:
        self.info = info
        self.script = list(script)
        self.calls = 0

    def _next(self) -> Say | Fail:
        self.calls += 1
        if not self.script:
            raise AssertionError(f"{self.info.name} was called more often than its script says")
        return self.script.pop(0)

    def available(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None

    async def complete(self, messages: list[Message], params: SamplingParams) -> ChatResult:
        step = self._next()
        if isinstance(step, Fail):  # a plain call fails whole: nothing reached the client
            raise ExpertCallError(self.info.name, step.reason)
        await asyncio.sleep(step.delay_s)
        return ChatResult("".join(step.pieces), step.finish_reason, step.usage)

    async def stream(self, messages: list[Message],
                     params: SamplingParams) -> AsyncIterator[StreamPiece]:
        step = self._next()
        if isinstance(step, Fail):
            for text in step.sent:
                yield StreamPiece(text)
            raise ExpertCallError(self.info.name, step.reason, partial=bool(step.sent),
                                  usage=step.usage)
        await asyncio.sleep(step.delay_s)
        for text in step.pieces[:-1]:
            yield StreamPiece(text)
        yield StreamPiece(step.pieces[-1], step.finish_reason, step.usage)


@dataclass
class Rig:
    runtime: Runtime
    local: ScriptedExpert
    cloud: ScriptedExpert
    ledger_path: Path

    def rows(self) -> list[tuple[str, str, float, float | None, int | None, int | None]]:
        """The ledger's rows as SQLite holds them (read on a connection of our own)."""
        with sqlite3.connect(self.ledger_path) as db:
            return db.execute("SELECT expert, state, reserved_usd, settled_usd, prompt_tokens, "
                              "completion_tokens FROM spend ORDER BY id").fetchall()

    def metric(self, name: str, **labels: str) -> float:
        value = self.runtime.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    async def assert_slots_free(self) -> None:
        """Each expert admits a call at once (limit 1, a short queue timeout): no slot of
        an earlier call is still held."""
        for name in ("local", "cloud"):
            slot = await asyncio.wait_for(self.runtime.admission.acquire(name), 1.0)
            slot.release()

    def decide(self, model: str = "cloud") -> Decision:
        return self.runtime.decide(model, MESSAGES, PARAMS)


def _rig(tmp_path: Path, local: list[Say | Fail], cloud: list[Say | Fail], *,
         on_exceeded: str = "local") -> Rig:
    settings = Settings(
        paths={"data_dir": tmp_path / "data", "cache_dir": tmp_path / "cache",
               "config_dir": tmp_path / "cfg"},
        local_experts=[{"name": "local", "model": str(tmp_path / "unused.gguf")}],
        cloud_experts=[{"name": "cloud", "base_url": "http://127.0.0.1:9/v1", "model": "m",
                        "input_usd_per_mtok": IN_USD, "output_usd_per_mtok": OUT_USD}],
        router={"bundle": "none"},
        server={"max_inflight_cloud": 1, "queue_timeout_s": 0.2},
        budget={"daily_usd": DAILY_CAP, "on_exceeded": on_exceeded},
    )
    local_expert = ScriptedExpert(ExpertInfo("local", "local", "script"), *local)
    cloud_expert = ScriptedExpert(
        ExpertInfo("cloud", "cloud", "script", prices=Prices(IN_USD, OUT_USD)), *cloud)
    experts: dict[str, Expert] = {"local": local_expert, "cloud": cloud_expert}
    path = tmp_path / "ledger.sqlite3"
    runtime = Runtime(settings=settings, experts=experts,
                      router=FixedRouter(list(experts), "local"),
                      ledger=Ledger(path, Caps(daily_usd=DAILY_CAP)),
                      admission=build_admission(settings, experts))
    return Rig(runtime, local_expert, cloud_expert, path)


def _usd(prompt: int, completion: int) -> float:
    """A cloud call's bill, worked out by hand from the published prices."""
    return prompt * IN_USD / 1e6 + completion * OUT_USD / 1e6


LOCAL_SAYS = Say(("Two plus two ", "is four."), TokenUsage(9, 5))


async def test_a_cloud_answer_is_reserved_at_its_worst_case_and_settled_at_its_bill(
        tmp_path: Path) -> None:
    rig = _rig(tmp_path, [], [Say(("Four.",), TokenUsage(12, 3))])
    decision = rig.decide()
    assert decision.worst_case_usd == pytest.approx(_usd(decision.prompt_bound, 16))
    answer, by = await rig.runtime.complete(decision, MESSAGES, PARAMS)
    assert (answer.content, by.expert, by.fallback_from) == ("Four.", "cloud", None)
    ((expert, state, reserved, settled, prompt, completion),) = rig.rows()
    assert (expert, state, prompt, completion) == ("cloud", "settled", 12, 3)
    assert reserved == pytest.approx(decision.worst_case_usd)
    assert settled == pytest.approx(_usd(12, 3))
    assert rig.metric("edgeroute_spend_usd_total", expert="cloud") == pytest.approx(_usd(12, 3))
    (record,) = rig.runtime.decisions.records()
    assert (record.answered_by, record.cost_usd) == ("cloud", pytest.approx(_usd(12, 3)))
    await rig.assert_slots_free()


@pytest.mark.parametrize("stream", [False, True])
async def test_a_cloud_failure_before_the_first_byte_falls_back_and_releases(
        tmp_path: Path, stream: bool) -> None:
    rig = _rig(tmp_path, [LOCAL_SAYS], [Fail("connection refused")])
    decision = rig.decide()
    if stream:
        got = [(p.content, by.expert) async for p, by in
               rig.runtime.stream(decision, MESSAGES, PARAMS)]
        assert got == [("Two plus two ", "local"), ("is four.", "local")]
        by = rig.runtime.decisions.records()[-1]
        assert by.answered_by == "local"
    else:
        answer, fell = await rig.runtime.complete(decision, MESSAGES, PARAMS)
        assert answer.content == "Two plus two is four."
        assert (fell.expert, fell.fallback_from) == ("local", "cloud")
        assert fell.reason == "fallback: connection refused"
        assert fell.worst_case_usd == 0.0
    assert (rig.cloud.calls, rig.local.calls) == (1, 1)
    ((expert, state, reserved, settled, _, _),) = rig.rows()  # reserved, then released
    assert (expert, state, settled) == ("cloud", "released", None)
    assert reserved == pytest.approx(decision.worst_case_usd)
    assert rig.runtime.ledger.remaining("cloud") == pytest.approx(DAILY_CAP)
    assert rig.metric("edgeroute_fallbacks_total", from_expert="cloud", to_expert="local") == 1
    assert rig.metric("edgeroute_spend_usd_total", expert="cloud") == 0
    await rig.assert_slots_free()


async def test_a_failure_after_bytes_is_not_replaced_and_is_billed(tmp_path: Path) -> None:
    """Bytes reached the client: the local expert does not answer over them; the stream
    ends in the error, and what the peer consumed is billed."""
    consumed = TokenUsage(12, 2)
    rig = _rig(tmp_path, [LOCAL_SAYS], [Fail("peer reset", sent=("Fo", "ur"), usage=consumed)])
    got: list[str] = []
    with pytest.raises(ExpertCallError, match="peer reset") as err:
        async for piece, by in rig.runtime.stream(rig.decide(), MESSAGES, PARAMS):
            assert by.expert == "cloud"
            got.append(piece.content)
    assert got == ["Fo", "ur"] and err.value.partial
    assert rig.local.calls == 0
    ((_, state, _, settled, prompt, completion),) = rig.rows()
    assert (state, prompt, completion) == ("settled", 12, 2)
    assert settled == pytest.approx(_usd(12, 2))
    assert rig.metric("edgeroute_fallbacks_total", from_expert="cloud", to_expert="local") == 0
    assert rig.metric("edgeroute_requests_total", expert="cloud") == 0  # no answer
    await rig.assert_slots_free()


async def test_a_client_that_leaves_mid_stream_is_billed_the_worst_case(
        tmp_path: Path) -> None:
    """The usage never comes: the row settles at its reservation, and the slot frees."""
    rig = _rig(tmp_path, [], [Say(("a", "b", "c"), TokenUsage(12, 3))])
    decision = rig.decide()
    pieces = rig.runtime.stream(decision, MESSAGES, PARAMS)
    first, _ = await pieces.__anext__()
    assert first.content == "a"
    await pieces.aclose()
    ((_, state, reserved, settled, _, _),) = rig.rows()
    assert state == "settled" and settled == pytest.approx(reserved)
    assert reserved == pytest.approx(decision.worst_case_usd)
    await rig.assert_slots_free()


async def test_a_lost_budget_race_falls_back_to_the_local_expert(tmp_path: Path) -> None:
    """Decided while the budget allowed it; a concurrent request then reserved nearly all
    of it: the reservation is refused, and the local expert answers in its own slot."""
    rig = _rig(tmp_path, [LOCAL_SAYS], [Say(("Four.",), TokenUsage(12, 3))])
    decision = rig.decide()
    assert decision.expert == "cloud"
    rival = rig.runtime.ledger.reserve("cloud", DAILY_CAP - decision.worst_case_usd / 2)
    answer, by = await rig.runtime.complete(decision, MESSAGES, PARAMS)
    assert answer.content == "Two plus two is four."
    assert (by.expert, by.fallback_from) == ("local", "cloud")
    assert by.reason.startswith("fallback: daily budget")
    assert rig.cloud.calls == 0
    assert [(r[0], r[1]) for r in rig.rows()] == [("cloud", "reserved")]  # the rival's only
    rig.runtime.ledger.release(rival)
    await rig.assert_slots_free()


async def test_a_lost_budget_race_is_429_when_the_budget_says_refuse(tmp_path: Path) -> None:
    rig = _rig(tmp_path, [LOCAL_SAYS], [Say(("Four.",), TokenUsage(12, 3))],
               on_exceeded="refuse")
    decision = rig.decide()
    rig.runtime.ledger.reserve("cloud", DAILY_CAP - decision.worst_case_usd / 2)
    with pytest.raises(BudgetExceededError, match="daily budget") as err:
        await rig.runtime.complete(decision, MESSAGES, PARAMS)
    assert err.value.status_code == 429
    assert (rig.cloud.calls, rig.local.calls) == (0, 0)
    assert rig.metric("edgeroute_refusals_total", reason="budget") == 1
    assert len(rig.rows()) == 1
    await rig.assert_slots_free()


async def test_no_fallback_from_the_fallback_expert_itself(tmp_path: Path) -> None:
    rig = _rig(tmp_path, [Fail("decode error")], [])
    with pytest.raises(ExpertCallError, match="decode error"):
        await rig.runtime.complete(rig.decide("local"), MESSAGES, PARAMS)
    assert rig.cloud.calls == 0 and rig.rows() == []
    await rig.assert_slots_free()


async def test_a_full_queue_is_503_and_takes_no_reservation(tmp_path: Path) -> None:
    """The cloud expert's one slot is held and its queue waits 0.2 s: 503, nothing
    reserved, nobody called."""
    rig = _rig(tmp_path, [], [Say(("Four.",), TokenUsage(12, 3))])
    held = await rig.runtime.admission.acquire("cloud")
    with pytest.raises(ExpertUnavailableError, match="stayed busy"):
        await rig.runtime.complete(rig.decide(), MESSAGES, PARAMS)
    held.release()
    assert rig.cloud.calls == 0 and rig.rows() == []
    await rig.assert_slots_free()


async def test_latency_and_answer_length_are_learned_once_per_answer(tmp_path: Path) -> None:
    """A streamed answer of four pieces teaches the policy once: one latency sample (the
    call's wall time, the scripted 100 ms included), one answer-length observation under
    the length model its decision priced it with, one request counted. A second, faster
    answer moves the moving latency estimate once, by its weight."""
    rig = _rig(tmp_path, [], [Say(("One", " two", " three", " four"), TokenUsage(12, 7),
                                  delay_s=0.1),
                              Say(("Again.",), TokenUsage(12, 2))])
    stats = rig.runtime.stats
    alpha, latency_alpha = stats.lengths.alpha, stats.latency_alpha
    assert 0 < alpha < 1 and 0 < latency_alpha < 1
    model = LengthModel(bias=math.log1p(4.0))
    decision = replace(rig.decide(), lengths={"cloud": model})
    pieces = [p async for p, _ in rig.runtime.stream(decision, MESSAGES, PARAMS)]
    assert len(pieces) == 4
    first_latency = stats.latency_s["cloud"]
    assert 0.1 <= first_latency < 5
    assert stats.lengths.answers == {"cloud": 1}
    assert stats.lengths.offsets["cloud"] == pytest.approx(
        alpha * (math.log1p(7) - math.log1p(4)))
    assert rig.metric("edgeroute_requests_total", expert="cloud") == 1
    assert rig.metric("edgeroute_request_latency_seconds_count", expert="cloud") == 1
    assert "local" not in stats.latency_s

    await rig.runtime.complete(replace(rig.decide(), lengths={"cloud": model}), MESSAGES,
                               PARAMS)
    assert stats.lengths.answers == {"cloud": 2}
    assert rig.metric("edgeroute_requests_total", expert="cloud") == 2
    assert rig.metric("edgeroute_request_latency_seconds_count", expert="cloud") == 2
    # one step of the moving average toward an answer faster than the first:
    # second = first + a * (new - first) with 0 <= new < first
    second = stats.latency_s["cloud"]
    assert first_latency * (1 - latency_alpha) <= second < first_latency
    assert stats.lengths.offsets["cloud"] == pytest.approx(
        (1 - alpha) * alpha * (math.log1p(7) - math.log1p(4))
        + alpha * (math.log1p(2) - math.log1p(4)))
