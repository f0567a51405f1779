"""A hand-cranked `Clock` for the batcher's unit tests: time moves only when a test says so."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class _Handle:
    when: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A `Clock` whose time moves only when a test calls `advance`."""

    def __init__(self) -> None:
        self._now = 0.0
        self._due: list[_Handle] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Handle:
        handle = _Handle(self._now + delay, next(self._seq), callback)
        heapq.heappush(self._due, handle)
        return handle

    def advance(self, dt: float) -> None:
        """Move time on by `dt`, running due callbacks in time order (each at its own time)."""
        target = self._now + dt
        while self._due and self._due[0].when <= target:
            handle = heapq.heappop(self._due)
            if not handle.cancelled:
                self._now = handle.when
                handle.callback()
        self._now = target


async def settle() -> None:
    """Let every ready task run until the loop has nothing left to do right now."""
    for _ in range(20):
        await asyncio.sleep(0)
