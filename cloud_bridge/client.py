"""One OpenAI-compatible endpoint, called with layered timeouts, retries and a breaker.

A :class:`BridgeClient` owns one ``httpx.AsyncClient`` (its connection pool), one
:class:`CircuitBreaker` and the endpoint's config. ``complete`` returns a whole answer;
``stream`` yields deltas and retries only until the first delta left it, so a caller
never sees a stream restart. Redirects are never followed: httpx would re-send the
``Authorization`` header to wherever ``Location`` points. The transport is a parameter,
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
from typing import TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from cloud_bridge.breaker import BreakerPolicy, CircuitBreaker
from cloud_bridge.errors import (
    RETRYABLE_STATUS,
    CallError,
    CallTimeout,
    ConnectFailed,
    DeadlineExceeded,
    FirstByteTimeout,
    RedirectRefused,
    StreamBroken,
    UpstreamStatusError,
    translating,
)
from cloud_bridge.retry import RetryPolicy, parse_retry_after
from cloud_bridge.sse import SSEDecoder
from cloud_bridge.timeouts import Deadline, Timeouts
from cloud_bridge.usage import Prices, TokenUsage, counted_usage
from cloud_bridge.wire import (
    ChatResult,
    SamplingParams,
    StreamPiece,
    error_detail,
    parse_chunk,
    parse_completion,
    request_body,
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

    @property
    def chat_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


@dataclass
class _StreamState:
    """What one streaming call has seen so far, across its attempts."""

    delivered: int = 0
    finish_reason: str | None = None
    usage: TokenUsage | None = None


def counts_against_peer(exc: CallError) -> bool:
    """Failures that say the peer is unwell (they move the breaker); a 400 does not."""
    if isinstance(exc, UpstreamStatusError):
        return exc.status in RETRYABLE_STATUS
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

    # -- plain ------------------------------------------------------------------------
    async def complete(
        self, messages: list[dict[str, str]], params: SamplingParams
    ) -> ChatResult:
        """One whole answer; retried on transient failures within the deadline."""
        self.breaker.before_call()
        deadline = Deadline(self.endpoint.timeouts.deadline_s, self._clock)
        body = request_body(self.endpoint.model, messages, params, stream=False)
        attempt = 0
        try:
            while True:
                try:
                    content, finish, usage = await self._complete_once(body, deadline)
                    break
                except CallError as exc:
                    await self._wait_or_raise(exc, attempt, deadline)
                    attempt += 1
        except BaseException as exc:
            self._record(exc)
            raise
        self.breaker.record_success()
        usage = usage or counted_usage(messages, 0)
        cost = self.endpoint.prices.cost_usd(usage)
        return ChatResult(content, finish, usage, cost, attempts=attempt + 1)

    async def _complete_once(
        self, body: dict[str, object], deadline: Deadline
    ) -> tuple[str, str, TokenUsage | None]:
        response = await self._open(body, deadline)
        try:
            with translating(self.endpoint.name, "body"):
                raw = await self._within_deadline(response.aread(), deadline)
        finally:
            await response.aclose()
        return parse_completion(self.endpoint.name, raw.decode("utf-8", "replace"))

    # -- streaming --------------------------------------------------------------------
    async def stream(
        self, messages: list[dict[str, str]], params: SamplingParams
    ) -> AsyncIterator[StreamPiece]:
        """Deltas as they arrive; the last piece carries finish_reason, usage and cost.

        Retries happen only before the first delta is yielded. A failure after it is
        raised with ``partial=True`` and the usage counted so far on the exception.
        """
        self.breaker.before_call()
        deadline = Deadline(self.endpoint.timeouts.deadline_s, self._clock)
        body = request_body(self.endpoint.model, messages, params, stream=True)
        state = _StreamState()
        attempt = 0
        try:
            while True:
                try:
                    async with aclosing(self._stream_once(body, deadline, state)) as pieces:
                        async for piece in pieces:
                            state.delivered += 1
                            yield piece
                    break
                except CallError as exc:
                    if state.delivered:
                        exc.partial = True
                        exc.usage = state.usage or counted_usage(messages, state.delivered)
                    await self._wait_or_raise(exc, attempt, deadline)
                    attempt += 1
        except BaseException as exc:
            self._record(exc, delivered=state.delivered > 0)
            raise
        self.breaker.record_success()
        usage = state.usage or counted_usage(messages, state.delivered)
        yield StreamPiece(
            finish_reason=state.finish_reason or "stop",
            usage=usage,
            cost_usd=self.endpoint.prices.cost_usd(usage),
        )

    async def _stream_once(
        self, body: dict[str, object], deadline: Deadline, state: _StreamState
    ) -> AsyncGenerator[StreamPiece, None]:
        name = self.endpoint.name
        response = await self._open(body, deadline)
        try:
            lines = response.aiter_lines()
            decoder = SSEDecoder()
            while True:
                with translating(name, "body"):
                    line = await self._within_deadline(anext(lines, None), deadline)
                payload = decoder.feed(line) if line is not None else decoder.flush()
                if payload == "[DONE]":
                    await self._drain(lines, deadline)
                    return
                if payload is not None:
                    content, finish, usage = parse_chunk(name, payload)
                    state.usage = usage or state.usage
                    state.finish_reason = finish or state.finish_reason
                    if content:
                        yield StreamPiece(content=content)
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

    # -- shared -----------------------------------------------------------------------
    async def _open(self, body: dict[str, object], deadline: Deadline) -> httpx.Response:
        """Send the request and wait for a 2xx response head (the first byte)."""
        name, timeouts = self.endpoint.name, self.endpoint.timeouts
        remaining = deadline.remaining()
        if remaining <= 0:
            raise DeadlineExceeded(name, f"deadline of {timeouts.deadline_s}s passed")
        request = self._http.build_request(
            "POST", self.endpoint.chat_url, json=body, headers=self._auth_headers()
        )
        limit = min(timeouts.first_byte_s, remaining)
        try:
            with translating(name, "head", timeouts.describe()):
                response = await _bounded(self._http.send(request, stream=True), limit)
        except asyncio.TimeoutError as exc:
            if limit < timeouts.first_byte_s:
                raise DeadlineExceeded(
                    name, f"deadline of {timeouts.deadline_s}s passed waiting for a response"
                ) from exc
            raise FirstByteTimeout(
                name, f"no response within first_byte_timeout {timeouts.first_byte_s}s"
            ) from exc
        if response.is_success:
            return response
        try:
            await self._raise_for_status(response, deadline)
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
            with translating(name, "body"):
                raw = await self._within_deadline(response.aread(), deadline)
            text = raw[:MAX_ERROR_BODY].decode("utf-8", "replace")
        except CallError:
            pass  # the status line is what matters; a torn error body adds nothing
        raise UpstreamStatusError(
            name,
            response.status_code,
            error_detail(text),
            parse_retry_after(response.headers.get("retry-after")),
        )

    async def _within_deadline(self, aw: Awaitable[T], deadline: Deadline) -> T:
        try:
            return await _bounded(aw, max(deadline.remaining(), 0.001))
        except asyncio.TimeoutError as exc:
            raise DeadlineExceeded(
                self.endpoint.name,
                f"deadline of {self.endpoint.timeouts.deadline_s}s passed mid-response",
            ) from exc

    async def _wait_or_raise(self, exc: CallError, attempt: int, deadline: Deadline) -> None:
        wait = self.endpoint.retry.next_wait(exc, attempt, deadline.remaining(), self._rng)
        if wait is None:
            raise exc
        log.info("expert %s attempt %d failed (%s); retrying in %.2fs",
                 self.endpoint.name, attempt + 1, exc, wait)
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
