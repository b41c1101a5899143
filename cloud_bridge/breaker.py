"""A per-expert circuit breaker, so a dead cloud costs one fast refusal, not a timeout.

    closed --(failure_threshold failed calls in a row)--> open
    open   --(cooldown passed)--> half-open: one trial call is let through
    half-open --success--> closed (cooldown back to its base)
    half-open --failure--> open again, cooldown doubled up to max_cooldown_s

Only failures that say the peer is unwell count (the retryable kind: connect errors,
timeouts, broken streams, 408/429/5xx); an answer about one request does not: a 400, or a
5xx that is ``request_shaped`` (a validation-error body, the same answer on a retry;
``cloud_bridge.errors.UpstreamStatusError``). A call counts
once, after its own retries, so the default threshold is 1: a call that already failed
its retries (or its first-token budget) says the peer is down, and the next request
should not pay the same wait. The clock is injectable so tests step through cooldowns
without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cloud_bridge.errors import CircuitOpenError

State = Literal["closed", "open", "half-open"]


@dataclass(frozen=True)
class BreakerPolicy:
    failure_threshold: int = 1
    cooldown_s: float = 5.0
    max_cooldown_s: float = 300.0


class CircuitBreaker:
    """State for one expert. Not thread-safe: used from one event loop."""

    def __init__(
        self,
        expert: str,
        policy: BreakerPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.expert = expert
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._failures = 0
        self._cooldown = self.policy.cooldown_s
        self._open_until: float | None = None
        self._trial_running = False

    @property
    def state(self) -> State:
        if self._open_until is None:
            return "closed"
        return "open" if self._clock() < self._open_until else "half-open"

    @property
    def cooldown_s(self) -> float:
        """The cooldown the next opening will use."""
        return self._cooldown

    def before_call(self) -> None:
        """Raise CircuitOpenError unless a call may go out now."""
        state = self.state
        if state == "closed":
            return
        if state == "open" or self._trial_running:
            assert self._open_until is not None
            retry_in = max(self._open_until - self._clock(), 0.0)
            raise CircuitOpenError(self.expert, retry_in)
        self._trial_running = True

    def record_success(self) -> None:
        self._failures = 0
        self._cooldown = self.policy.cooldown_s
        self._open_until = None
        self._trial_running = False

    def record_failure(self) -> None:
        if self._trial_running or self._open_until is not None:
            # A failed trial: open again for twice as long, up to the cap.
            self._cooldown = min(self._cooldown * 2, self.policy.max_cooldown_s)
            self._open(self._cooldown)
            return
        self._failures += 1
        if self._failures >= self.policy.failure_threshold:
            self._open(self._cooldown)

    def release_trial(self) -> None:
        """A trial ended without a verdict (cancelled): let the next call try."""
        self._trial_running = False

    def _open(self, seconds: float) -> None:
        self._open_until = self._clock() + seconds
        self._trial_running = False
