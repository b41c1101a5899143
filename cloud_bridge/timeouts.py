"""Layered timeouts: connect, first token, stall between tokens, overall deadline.

Every call streams from the peer (see ``client``), even when the caller wants one plain
answer, so a stall is seen as silence between tokens instead of hiding inside one long
wait for a whole body: a dead or black-holed peer is detected in seconds, and a long
answer that keeps streaming is never cut short. Four limits, the tightest wins and the
error says which one fired:

- ``connect_s``: TCP/TLS connect of one attempt (httpx enforces it).
- ``first_token_s``: from the call's start to its first token, retries and backoff
  included. It is the offline budget: after it the daemon answers with a local expert.
- ``read_s``: the longest silence between two tokens once the answer streams (the stall
  timeout). SSE comments and empty chunks do not count as tokens.
- ``deadline_s``: the whole call, however steadily it streams.

``first_byte_s`` applies only to endpoints configured not to stream: their response head
comes with the whole answer, so it bounds the whole answer.

httpx enforces connect per socket operation; it cannot bound a whole call, and a peer
dripping one byte a second never trips a per-read timeout. So every wait the bridge does
is bounded by asyncio against these instants, retries and backoff sleeps included.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 2.0
    first_token_s: float = 6.0
    read_s: float = 5.0
    first_byte_s: float = 60.0
    deadline_s: float = 300.0

    def __post_init__(self) -> None:
        for name in ("connect_s", "first_token_s", "read_s", "first_byte_s", "deadline_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"timeout {name}={getattr(self, name)} must be > 0")

    def httpx_timeout(self) -> httpx.Timeout:
        """The per-operation part httpx enforces itself (pool waits count as connect).
        Reads are bounded by the bridge (first token, stall, deadline), not per socket read."""
        return httpx.Timeout(connect=self.connect_s, read=None, write=self.read_s,
                             pool=self.connect_s)

    def describe(self) -> str:
        return (
            f"(connect {self.connect_s}s, first token {self.first_token_s}s, "
            f"stall {self.read_s}s, deadline {self.deadline_s}s)"
        )


@dataclass
class Deadline:
    """The instant one call must be over by, on a monotonic clock."""

    seconds: float
    clock: Callable[[], float] = time.monotonic
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    @property
    def at(self) -> float:
        return self.started + self.seconds

    def remaining(self) -> float:
        return max(self.at - self.clock(), 0.0)

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def elapsed(self) -> float:
        return self.clock() - self.started
