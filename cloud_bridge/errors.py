"""The bridge's error tree, and the one place where httpx errors become bridge errors.

    BridgeError                    base of everything the bridge raises on purpose
    ├── BridgeConfigError          bad endpoint config: unreadable key file, bad URL
    ├── CircuitOpenError           the expert's breaker is open; no call was made
    └── CallError                  one call failed (``retryable``, ``partial``, ``usage``)
        ├── ConnectFailed          refused, unreachable, DNS or TLS failure (retryable)
        ├── CallTimeout            a layered timeout fired (retryable unless deadline)
        │   ├── ConnectTimeout     TCP/TLS connect took longer than connect_timeout_s
        │   ├── FirstTokenTimeout  no token within first_token_timeout_s (retries included)
        │   ├── FirstByteTimeout   a non-streaming endpoint: no answer within first_byte_timeout_s
        │   ├── ReadTimeout        a stall: no token for read_timeout_s once the answer streams
        │   └── DeadlineExceeded   the call's overall deadline passed (never retried)
        ├── StreamBroken           connection reset or closed mid-body, bad framing
        ├── RedirectRefused        the peer answered 3xx; redirects are never followed
        ├── UpstreamStatusError    non-2xx answer (retryable for 408, 429, 5xx unless
        │                          ``request_shaped``: the answer is about the request)
        └── MalformedResponse      2xx answer that is not OpenAI-shaped JSON / SSE

``partial`` is True once a streamed delta reached the caller: such a call is never
retried and never silently replaced. ``usage`` is what was consumed before the failure
(counted when the peer sent none), so partial calls are still billed.

Low-level httpx exceptions are translated only in :func:`translating`, always with
``raise ... from exc`` so the original stays in the traceback for debugging.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

import httpx

if TYPE_CHECKING:
    from cloud_bridge.usage import TokenUsage

Phase = Literal["connect", "head", "body"]
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Statuses that speak of the peer's state whatever the body says: a gateway that lost its
# upstream, a server that says it is unavailable or slow.
AVAILABILITY_STATUS = frozenset({408, 429, 502, 503, 504})


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class BridgeConfigError(BridgeError):
    """An endpoint cannot be used as configured (the message names the bad value)."""


class CircuitOpenError(BridgeError):
    """The expert failed repeatedly; calls are refused until ``retry_in_s`` passes."""

    def __init__(self, expert: str, retry_in_s: float) -> None:
        super().__init__(
            f"circuit open for expert {expert!r}: recent calls failed; next try in "
            f"{retry_in_s:.1f}s"
        )
        self.expert = expert
        self.retry_in_s = retry_in_s


class CallError(BridgeError):
    """One call to an expert failed."""

    retryable = False

    def __init__(self, expert: str, message: str) -> None:
        super().__init__(f"{expert}: {message}")
        self.expert = expert
        self.detail = message
        self.partial = False
        self.usage: TokenUsage | None = None


class ConnectFailed(CallError):
    retryable = True


class CallTimeout(CallError):
    retryable = True


class ConnectTimeout(CallTimeout):
    pass


class FirstTokenTimeout(CallTimeout):
    """The offline budget ran out before the first token: never retried (no time left)."""

    retryable = False


class FirstByteTimeout(CallTimeout):
    pass


class ReadTimeout(CallTimeout):
    pass


class DeadlineExceeded(CallTimeout):
    retryable = False


class StreamBroken(CallError):
    retryable = True


class RedirectRefused(CallError):
    """3xx: following it would send the API key to wherever ``Location`` points."""


class MalformedResponse(CallError):
    pass


class UpstreamStatusError(CallError):
    """A non-2xx answer. ``request_shaped``: the answer is about this request, not the
    peer's health (any 4xx but 408 and 429; a 5xx whose body is a validation error, or
    that came back the same on a retry): it is not retried again and never moves the
    breaker, because the next request would be answered fine."""

    def __init__(
        self, expert: str, status: int, detail: str, retry_after_s: float | None = None,
        *, validation_body: bool = False,
    ) -> None:
        super().__init__(expert, f"HTTP {status}: {detail}")
        self.status = status
        self.retry_after_s = retry_after_s
        self.retryable = status in RETRYABLE_STATUS
        self.request_shaped = status not in RETRYABLE_STATUS
        if validation_body:
            self.mark_request_shaped()

    def mark_request_shaped(self) -> None:
        """A 5xx that is the request's fault (e.g. llama.cpp's server answers a role it
        does not know with a 500); availability statuses (502, 503, 504) never are."""
        if self.status not in AVAILABILITY_STATUS:
            self.request_shaped = True
            self.retryable = False

    def same_answer(self, other: CallError) -> bool:
        """Whether ``other`` (the previous attempt's error) said exactly this."""
        return (isinstance(other, UpstreamStatusError) and other.status == self.status
                and other.detail == self.detail)


@contextmanager
def translating(expert: str, phase: Phase, timeouts_desc: str = "") -> Iterator[None]:
    """Turn httpx's exceptions into bridge errors; ``phase`` says which timeout fired.

    ``phase`` is "connect"/"head" until the response head arrived, "body" after. An
    httpx read timeout before the head means the peer accepted and went silent (first
    byte); after it, silence between bytes.
    """
    try:
        yield
    except httpx.ConnectTimeout as exc:
        raise ConnectTimeout(expert, f"connect timed out {timeouts_desc}".strip()) from exc
    except httpx.ConnectError as exc:
        raise ConnectFailed(expert, f"cannot connect: {exc}") from exc
    except httpx.TimeoutException as exc:
        if phase == "body":
            raise ReadTimeout(expert, f"peer went silent mid-body {timeouts_desc}".strip()) from exc
        raise FirstByteTimeout(expert, f"no response head {timeouts_desc}".strip()) from exc
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        where = "mid-body" if phase == "body" else "before the response head"
        raise StreamBroken(expert, f"connection broken {where}: {exc!r}") from exc
    except httpx.TransportError as exc:
        raise ConnectFailed(expert, f"transport error: {exc!r}") from exc
