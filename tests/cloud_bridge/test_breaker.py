from __future__ import annotations

import pytest

from cloud_bridge.breaker import BreakerPolicy, CircuitBreaker
from cloud_bridge.errors import CircuitOpenError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _fail_trial(b: CircuitBreaker) -> None:
    b.before_call()
    b.record_failure()


def test_opens_after_threshold_and_doubles_cooldown_to_cap() -> None:
    clock = Clock()
    b = CircuitBreaker("gpt", BreakerPolicy(failure_threshold=2, cooldown_s=1.0,
                                             max_cooldown_s=3.0), clock)
    b.record_failure()
    assert b.state == "closed"
    b.record_failure()
    assert b.state == "open"
    with pytest.raises(CircuitOpenError) as info:
        b.before_call()
    assert 0.9 < info.value.retry_in_s <= 1.0 and "gpt" in str(info.value)
    expected = [2.0, 3.0, 3.0]  # doubling, then the cap
    for cooldown in expected:
        clock.now += b.cooldown_s
        assert b.state == "half-open"
        _fail_trial(b)
        assert b.state == "open" and b.cooldown_s == cooldown
        clock.now += cooldown - 0.01
        assert b.state == "open"
        clock.now += 0.01


def test_half_open_lets_one_trial_through_and_success_resets() -> None:
    clock = Clock()
    b = CircuitBreaker("gpt", BreakerPolicy(failure_threshold=1, cooldown_s=1.0), clock)
    b.record_failure()
    clock.now += 1.0
    b.before_call()  # the trial
    with pytest.raises(CircuitOpenError):
        b.before_call()  # a second caller while the trial runs
    b.record_success()
    assert b.state == "closed" and b.cooldown_s == 1.0
    b.before_call()


def test_success_resets_the_failure_count() -> None:
    b = CircuitBreaker("gpt", BreakerPolicy(failure_threshold=2), Clock())
    b.record_failure()
    b.record_success()
    b.record_failure()
    assert b.state == "closed"
