"""When to try a failed call again, and how long to wait first.

Only failures that say nothing about the request itself are retried: connect errors,
timeouts before the deadline, broken connections, 408, 429 and 5xx. The wait is "full
jitter" exponential backoff (uniform in ``[0, min(cap, base * 2**attempt)]``, so a fleet
of devices does not retry in lockstep), raised to the peer's ``Retry-After`` when it
sent one. A wait that would outlive the call's deadline is not taken: the call fails now,
which lets the daemon fall back to the local expert at once instead of sleeping.
A call whose first delta already reached the caller is never retried (``partial``).
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from dataclasses import dataclass

from cloud_bridge.errors import CallError, UpstreamStatusError


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 2
    base_s: float = 0.25
    cap_s: float = 4.0

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        """Full-jitter wait before retry number ``attempt + 1`` (``attempt`` from 0)."""
        ceiling = min(self.cap_s, self.base_s * (2**attempt))
        return rng.uniform(0.0, ceiling)

    def next_wait(
        self, error: CallError, attempt: int, remaining_s: float, rng: random.Random
    ) -> float | None:
        """Seconds to wait before retrying, or None when the call must fail now."""
        if error.partial or not error.retryable or attempt >= self.max_retries:
            return None
        wait = self.backoff_s(attempt, rng)
        if isinstance(error, UpstreamStatusError) and error.retry_after_s is not None:
            wait = max(wait, error.retry_after_s)
        # Leave room for the retry itself: a wait that eats the whole deadline is useless.
        if wait >= remaining_s:
            return None
        return wait


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    now = time.time() if now is None else now
    return max(when.timestamp() - now, 0.0)
