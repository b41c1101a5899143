"""Backpressure: a cap on in-flight calls per expert and a bounded, timed wait queue.

A request that finds the queue full, or waits past the timeout, is refused at once with
HTTP 503 and ``Retry-After`` instead of piling up behind a busy model. Routes that touch
no expert (``/health``, ``/metrics``) never wait here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from agent.errors import ExpertUnavailableError


@dataclass
class _Gate:
    slots: asyncio.Semaphore
    waiting: int = 0


@dataclass
class Admission:
    limits: dict[str, int]  # expert -> concurrent calls
    max_queue: int
    timeout_s: float
    _gates: dict[str, _Gate] = field(default_factory=dict)

    def _gate(self, expert: str) -> _Gate:
        gate = self._gates.get(expert)
        if gate is None:
            gate = self._gates[expert] = _Gate(asyncio.Semaphore(self.limits.get(expert, 1)))
        return gate

    async def acquire(self, expert: str) -> Slot:
        gate = self._gate(expert)
        if gate.slots.locked():
            if gate.waiting >= self.max_queue:
                raise ExpertUnavailableError(
                    f"expert {expert!r} is busy and its queue is full ({self.max_queue}); "
                    "retry later", retry_after_s=2)
            gate.waiting += 1
            try:
                await asyncio.wait_for(gate.slots.acquire(), self.timeout_s)
            except asyncio.TimeoutError as exc:
                raise ExpertUnavailableError(
                    f"expert {expert!r} stayed busy for {self.timeout_s:g}s; retry later",
                    retry_after_s=5) from exc
            finally:
                gate.waiting -= 1
        else:
            await gate.slots.acquire()
        return Slot(gate)

    def queued(self) -> dict[str, int]:
        return {name: g.waiting for name, g in self._gates.items()}


class Slot:
    """One admitted call; release exactly once (idempotent)."""

    def __init__(self, gate: _Gate) -> None:
        self._gate: _Gate | None = gate

    def release(self) -> None:
        if self._gate is not None:
            self._gate.slots.release()
            self._gate = None
