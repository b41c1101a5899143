"""One OpenAI-compatible endpoint, called with layered timeouts, retries and a breaker.

A :class:`BridgeClient` owns one ``httpx.AsyncClient`` (its connection pool), one
:class:`CircuitBreaker` and the endpoint's config. ``complete`` returns a whole answer;
``stream`` yields deltas and retries only until the first delta left it, so a caller
never sees a stream restart. Both stream from the peer: ``complete`` gathers the deltas
(usage included) into one answer, so its stalls are caught between tokens too (see
``timeouts``); an endpoint configured with ``streams=False`` gets plain calls instead.
Redirects are never followed: httpx would re-send the ``Authorization`` header to
wherever ``Location`` points. The transport is a parameter,
the one seam tests may use for conditions a real peer cannot produce.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from cloud_bridge.breaker import BreakerPolicy, CircuitBreaker
from cloud_bridge.errors import (
    CallError,
    CallTimeout,
    ConnectFailed,
    DeadlineExceeded,
    FirstByteTimeout,
    FirstTokenTimeout,
    ReadTimeout,
    RedirectRefused,
    StreamBroken,
    UpstreamStatusError,
    translating,
)
from cloud_bridge.messages import Message, map_roles
from cloud_bridge.retry import RetryPolicy, parse_retry_after
from cloud_bridge.sse import SSEDecoder
from cloud_bridge.timeouts import Deadline, Timeouts
from cloud_bridge.usage import Prices, TokenUsage, counted_usage
from cloud_bridge.wire import (
    ChatResult,
    SamplingParams,
    StreamPiece,
    error_detail,
    fold,
    parse_chunk_piece,
    parse_completion,
    parse_completion_message,
    request_body,
    validation_error_body,
)

log = logging.getLogger("edgeroute.cloud_bridge")
T = TypeVar("T")
MAX_ERROR_BODY = 64 * 1024
DRAIN_S = 0.5  # how long to wait for a body's end after [DONE]


@dataclass(frozen=True)
class Endpoint:
    """Everything needed to call one cloud expert. ``api_key`` never appears in repr."""

    name: str
    base_url: str
    model: str
    api_key: SecretStr | None = field(default=None, repr=False)
    prices: Prices = field(default_factory=Prices)
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    streams: bool = True  # False: the peer cannot stream; calls wait for whole answers
    developer_role: bool = False  # False: ``developer`` messages are sent as ``system``

    @property
    def chat_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


@dataclass
class _Call:
    """One call's clocks, and what its answer has seen so far, across attempts."""

    timeouts: Timeouts
    clock: Callable[[], float]
    deadline: Deadline = field(init=False)
    first_token_by: float = field(init=False)
    last_token_at: float | None = None
    delivered: int = 0  # pieces handed to the caller (a stream's)
    attempts: int = 0
    pieces: int = 0  # content pieces of the current attempt
    finish_reason: str | None = None
    usage: TokenUsage | None = None
    last_error: CallError | None = None  # the previous attempt's, to spot the same answer

    def __post_init__(self) -> None:
        self.deadline = Deadline(self.timeouts.deadline_s, self.clock)
        self.first_token_by = self.deadline.started + self.timeouts.first_token_s

    def new_attempt(self) -> None:
        self.attempts += 1
        self.pieces, self.finish_reason, self.usage = 0, None, None

    def failed(self, exc: CallError) -> None:
        """Note an attempt's failure. A 5xx the peer gave twice in the same words is its
        answer to this request, not a passing fault: no further retry, no breaker."""
        if (isinstance(exc, UpstreamStatusError) and self.last_error is not None
                and exc.same_answer(self.last_error)):
            exc.mark_request_shaped()
        self.last_error = exc

    def token(self) -> None:
        self.last_token_at = self.clock()
        self.pieces += 1

    def wait_limit(self) -> tuple[float, str]:
        """How long the next wait may last, and which limit that is: the first-token
        budget until a token came, then the stall limit since the last token; the
        deadline when it is nearer."""
        now = self.clock()
        if self.last_token_at is None:
            limit, which = self.first_token_by - now, "first token"
        else:
            limit, which = self.last_token_at + self.timeouts.read_s - now, "stall"
        left = self.deadline.remaining()
        return (left, "deadline") if left <= limit else (max(limit, 0.0), which)


def counts_against_peer(exc: CallError) -> bool:
    """Failures that say the peer is unwell (they move the breaker); an answer about the
    request (a 400, a validation error sent as a 500, the same 500 on a retry) does not:
    the next request would be answered."""
    if isinstance(exc, UpstreamStatusError):
        return not exc.request_shaped
    return isinstance(exc, ConnectFailed | CallTimeout | StreamBroken)


async def _bounded(aw: Awaitable[T], seconds: float) -> T:
    """Await with a limit, without a task per call where the Python allows."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await aw
    return await asyncio.wait_for(aw, seconds)  # pragma: no cover - Python 3.10


class BridgeClient:
    """Calls one endpoint. Build one per expert; close it with :meth:`aclose`."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.breaker = CircuitBreaker(endpoint.name, endpoint.breaker, clock)
        self._rng = rng or random.Random()
        self._clock = clock
        self._http = httpx.AsyncClient(
            timeout=endpoint.timeouts.httpx_timeout(),
            follow_redirects=False,
            transport=transport,
        )

    def __repr__(self) -> str:
        e = self.endpoint
        return f"BridgeClient(name={e.name!r}, base_url={e.base_url!r}, model={e.model!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    def _new_call(self) -> _Call:
        return _Call(self.endpoint.timeouts, self._clock)

    # -- the two ways in ----------------------------------------------------------------
    async def complete(
        self, messages: list[Message], params: SamplingParams
    ) -> ChatResult:
        """One whole answer, streamed from the peer and gathered; retried on transient
        failures (a stream torn before it ended included: the caller saw nothing)."""
        call = self._new_call()
        if not self.endpoint.streams:
            return await self._complete_whole(messages, params, call)
        got: list[StreamPiece] = []
        async with aclosing(self._streamed(messages, params, call, buffered=True)) as pieces:
            async for piece in pieces:
                got.append(piece)
        assert got[-1].usage is not None  # the final piece always carries usage
        return fold(got, attempts=call.attempts)

    async def stream(
        self, messages: list[Message], params: SamplingParams
    ) -> AsyncIterator[StreamPiece]:
        """Deltas as they arrive; the last piece carries finish_reason, usage and cost.

        Retries happen only before the first delta is yielded. A failure after it is
        raised with ``partial=True`` and the usage counted so far on the exception.
        """
        call = self._new_call()
        if not self.endpoint.streams:
            result = await self._complete_whole(messages, params, call)
            if result.content or result.tool_calls:
                yield StreamPiece(content=result.content, tool_calls=tuple(
                    {"index": i, **c} for i, c in enumerate(result.tool_calls)),
                    logprobs=result.logprobs)
            yield StreamPiece(finish_reason=result.finish_reason, usage=result.usage,
                              cost_usd=result.cost_usd)
            return
        async with aclosing(self._streamed(messages, params, call, buffered=False)) as pieces:
            async for piece in pieces:
                yield piece

    # -- streaming from the peer --------------------------------------------------------
    async def _streamed(
        self, messages: list[Message], params: SamplingParams, call: _Call, *,
        buffered: bool,
    ) -> AsyncGenerator[StreamPiece, None]:
        """The peer's stream, attempts and breaker included. ``buffered``: hold the
        pieces until the answer is complete, so a torn stream can still be retried."""
        self.breaker.before_call()
        body = self._body(messages, params, stream=True)
        held: list[StreamPiece] = []
        try:
            while True:
                call.new_attempt()
                held.clear()
                try:
                    async with aclosing(self._stream_once(body, call)) as pieces:
                        async for piece in pieces:
                            if buffered:
                                held.append(piece)
                                continue
                            call.delivered += 1
                            yield piece
                    break
                except CallError as exc:
                    if call.delivered:
                        exc.partial = True
                        exc.usage = call.usage or counted_usage(messages, call.delivered)
                    call.failed(exc)
                    await self._wait_or_raise(exc, call, call.wait_limit()[0])
        except BaseException as exc:
            self._record(exc, delivered=call.delivered > 0)
            raise
        self.breaker.record_success()
        for piece in held:
            yield piece
        usage = call.usage or counted_usage(messages, call.pieces)
        yield StreamPiece(
            finish_reason=call.finish_reason or "stop",
            usage=usage,
            cost_usd=self.endpoint.prices.cost_usd(usage),
        )

    async def _stream_once(
        self, body: dict[str, object], call: _Call
    ) -> AsyncGenerator[StreamPiece, None]:
        name = self.endpoint.name
        response = await self._open(body, call, *call.wait_limit())
        try:
            lines = response.aiter_lines()
            decoder = SSEDecoder()
            while True:
                line = await self._waited(anext(lines, None), *call.wait_limit(), "body")
                payload = decoder.feed(line) if line is not None else decoder.flush()
                if payload == "[DONE]":
                    await self._drain(lines, call.deadline)
                    return
                if payload is not None:
                    got = parse_chunk_piece(name, payload)
                    call.usage = got.usage or call.usage
                    call.finish_reason = got.finish_reason or call.finish_reason
                    if got.content or got.tool_calls or got.logprobs:
                        call.token()
                        yield StreamPiece(content=got.content, tool_calls=got.tool_calls,
                                          logprobs=got.logprobs)
                if line is None:
                    raise StreamBroken(name, "stream ended without [DONE]")
        finally:
            await response.aclose()

    async def _drain(self, lines: AsyncIterator[str], deadline: Deadline) -> None:
        """Read the body's end after [DONE], so the connection goes back to the pool."""
        async def consume() -> None:
            async for _ in lines:
                pass

        # The answer is complete: a torn or late tail only costs the pooled connection.
        with suppress(httpx.HTTPError, asyncio.TimeoutError):
            await _bounded(consume(), min(DRAIN_S, max(deadline.remaining(), 0.001)))

    # -- an endpoint that cannot stream ---------------------------------------------------
    async def _complete_whole(
        self, messages: list[Message], params: SamplingParams, call: _Call
    ) -> ChatResult:
        """One plain call per attempt; the response head comes with the whole answer, so
        ``first_byte_s`` bounds the whole answer (today's behaviour for such peers)."""
        self.breaker.before_call()
        body = self._body(messages, params, stream=False)
        try:
            while True:
                call.new_attempt()
                try:
                    result, usage = await self._complete_once(body, call)
                    break
                except CallError as exc:
                    call.failed(exc)
                    await self._wait_or_raise(exc, call, call.deadline.remaining())
        except BaseException as exc:
            self._record(exc)
            raise
        self.breaker.record_success()
        usage = usage or counted_usage(messages, 0)
        cost = self.endpoint.prices.cost_usd(usage)
        return ChatResult(result.content, result.finish_reason, usage, cost,
                          attempts=call.attempts, tool_calls=result.tool_calls,
                          logprobs=result.logprobs)

    async def _complete_once(
        self, body: dict[str, object], call: _Call
    ) -> tuple[ChatResult, TokenUsage | None]:
        first_byte, left = self.endpoint.timeouts.first_byte_s, call.deadline.remaining()
        limit, which = (first_byte, "first byte") if first_byte < left else (left, "deadline")
        response = await self._open(body, call, limit, which)
        try:
            raw = await self._waited(response.aread(), call.deadline.remaining(), "deadline",
                                     "body")
        finally:
            await response.aclose()
        text = raw.decode("utf-8", "replace")
        return parse_completion_message(self.endpoint.name, text), parse_completion(
            self.endpoint.name, text)[2]

    # -- shared -----------------------------------------------------------------------
    def _body(self, messages: list[Message], params: SamplingParams, *,
              stream: bool) -> dict[str, Any]:
        """The request body, in the roles this endpoint takes."""
        wire = map_roles(messages, developer=self.endpoint.developer_role)
        return request_body(self.endpoint.model, wire, params, stream=stream)

    def _timed_out(self, which: str) -> CallError:
        name, t = self.endpoint.name, self.endpoint.timeouts
        if which == "first token":
            return FirstTokenTimeout(name, f"no token within first_token_timeout "
                                     f"{t.first_token_s}s (retries included)")
        if which == "stall":
            return ReadTimeout(name, f"stalled: no token for read_timeout {t.read_s}s")
        if which == "first byte":
            return FirstByteTimeout(name, f"no response within first_byte_timeout "
                                    f"{t.first_byte_s}s")
        return DeadlineExceeded(name, f"deadline of {t.deadline_s}s passed")

    async def _waited(self, aw: Awaitable[T], limit: float, which: str,
                      phase: Literal["head", "body"]) -> T:
        """Await one step of a call within ``limit``; the error names the limit."""
        try:
            with translating(self.endpoint.name, phase, self.endpoint.timeouts.describe()):
                return await _bounded(aw, max(limit, 0.001))
        except asyncio.TimeoutError as exc:
            raise self._timed_out(which) from exc

    async def _open(self, body: dict[str, object], call: _Call, limit: float,
                    which: str) -> httpx.Response:
        """Send the request and wait for a 2xx response head, within ``limit``."""
        if limit <= 0:
            raise self._timed_out(which)
        request = self._http.build_request(
            "POST", self.endpoint.chat_url, json=body, headers=self._auth_headers()
        )
        response = await self._waited(self._http.send(request, stream=True), limit, which,
                                      "head")
        if response.is_success:
            return response
        try:
            await self._raise_for_status(response, call.deadline)
        finally:
            await response.aclose()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _raise_for_status(self, response: httpx.Response, deadline: Deadline) -> None:
        name = self.endpoint.name
        if response.is_redirect:
            target = urlsplit(response.headers.get("location", ""))
            raise RedirectRefused(
                name,
                f"HTTP {response.status_code} redirect to {target.scheme}://{target.netloc} "
                "not followed (it would carry the API key); set base_url to the final URL",
            )
        text = ""
        try:
            raw = await self._waited(response.aread(), deadline.remaining(), "deadline",
                                     "body")
            text = raw[:MAX_ERROR_BODY].decode("utf-8", "replace")
        except CallError:
            pass  # the status line is what matters; a torn error body adds nothing
        raise UpstreamStatusError(
            name,
            response.status_code,
            error_detail(text),
            parse_retry_after(response.headers.get("retry-after")),
            validation_body=validation_error_body(text),
        )

    async def _wait_or_raise(self, exc: CallError, call: _Call, window_s: float) -> None:
        """Sleep before the next attempt, or raise ``exc`` when no retry fits in
        ``window_s`` (what is left of the first-token budget or the deadline)."""
        wait = self.endpoint.retry.next_wait(exc, call.attempts - 1, window_s, self._rng)
        if wait is None:
            raise exc
        log.info("expert %s attempt %d failed (%s); retrying in %.2fs",
                 self.endpoint.name, call.attempts, exc, wait)
        await asyncio.sleep(wait)

    def _record(self, exc: BaseException, *, delivered: bool = False) -> None:
        if isinstance(exc, CallError) and counts_against_peer(exc):
            self.breaker.record_failure()
        elif delivered:
            self.breaker.record_success()  # the caller stopped reading; the peer was fine
        else:
            self.breaker.release_trial()

    def _auth_headers(self) -> dict[str, str]:
        key = self.endpoint.api_key
        return {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
