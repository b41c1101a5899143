from __future__ import annotations

import email.utils
import random

from hypothesis import given
from hypothesis import strategies as st

from cloud_bridge.errors import (
    ConnectFailed,
    DeadlineExceeded,
    MalformedResponse,
    RedirectRefused,
    UpstreamStatusError,
)
from cloud_bridge.retry import RetryPolicy, parse_retry_after


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-4") == 0.0
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 12, usegmt=True)
    assert abs(parse_retry_after(date, now=now) - 12.0) < 1.0  # type: ignore[operator]
    for bad in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(bad) is None


def test_only_transient_failures_are_retried() -> None:
    policy, rng = RetryPolicy(max_retries=3, base_s=0.1, cap_s=1.0), random.Random(0)
    retried = [ConnectFailed("x", "refused"), UpstreamStatusError("x", 429, "slow down"),
               UpstreamStatusError("x", 408, "t"), UpstreamStatusError("x", 503, "down"),
               UpstreamStatusError("x", 500, "oops")]
    for exc in retried:
        assert policy.next_wait(exc, 0, 30.0, rng) is not None, exc
    final = [UpstreamStatusError("x", 400, "bad"), UpstreamStatusError("x", 401, "key"),
             RedirectRefused("x", "307"), MalformedResponse("x", "junk"),
             DeadlineExceeded("x", "late")]
    for exc in final:
        assert policy.next_wait(exc, 0, 30.0, rng) is None, exc


def test_no_retry_after_the_first_delta_or_past_max() -> None:
    policy, rng = RetryPolicy(max_retries=2), random.Random(0)
    exc = ConnectFailed("x", "reset")
    assert policy.next_wait(exc, 2, 30.0, rng) is None
    exc.partial = True
    assert policy.next_wait(exc, 0, 30.0, rng) is None


def test_retry_after_is_honoured_but_never_past_the_deadline() -> None:
    policy, rng = RetryPolicy(max_retries=2, base_s=0.01, cap_s=0.02), random.Random(0)
    exc = UpstreamStatusError("x", 429, "slow", retry_after_s=2.0)
    assert policy.next_wait(exc, 0, 10.0, rng) == 2.0
    assert policy.next_wait(exc, 0, 1.5, rng) is None


@given(attempt=st.integers(0, 20), base=st.floats(0.001, 5), cap=st.floats(0.001, 60),
       seed=st.integers(0, 2**32), remaining=st.floats(0, 120))
def test_backoff_is_capped_jittered_and_inside_the_deadline(
    attempt: int, base: float, cap: float, seed: int, remaining: float
) -> None:
    policy = RetryPolicy(max_retries=21, base_s=base, cap_s=cap)
    wait = policy.next_wait(ConnectFailed("x", "r"), attempt, remaining, random.Random(seed))
    if wait is not None:
        assert 0.0 <= wait <= min(cap, base * 2**attempt)
        assert wait < remaining
