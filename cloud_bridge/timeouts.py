"""Layered timeouts: connect, first byte, read (silence between bytes), overall deadline.

httpx enforces connect and read per socket operation; it cannot bound a whole call, and
a peer dripping one byte a second never trips a read timeout. So every wait the bridge
does is also bounded by what is left of the call's :class:`Deadline`, retries and
backoff sleeps included. The tightest bound wins and the error says which one fired.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 3.0
    read_s: float = 30.0
    first_byte_s: float = 15.0
    deadline_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("connect_s", "read_s", "first_byte_s", "deadline_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"timeout {name}={getattr(self, name)} must be > 0")

    def httpx_timeout(self) -> httpx.Timeout:
        """The per-operation part httpx enforces itself (pool waits count as connect)."""
        return httpx.Timeout(
            connect=self.connect_s, read=self.read_s, write=self.read_s, pool=self.connect_s
        )

    def describe(self) -> str:
        return (
            f"(connect {self.connect_s}s, first byte {self.first_byte_s}s, "
            f"read {self.read_s}s, deadline {self.deadline_s}s)"
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
