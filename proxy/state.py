"""Run-time state of one proxy app: whether it is draining, the one shutdown deadline, the
requests it bounds, and the open WebSockets to close."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web


@dataclass(eq=False, slots=True)
class State:
    draining: bool = False  # readiness fails, new batchable requests pass through
    deadline: float | None = None  # loop time by which every request must be answered
    websockets: set[web.WebSocketResponse] = field(default_factory=set)
    _bounds: set[asyncio.Timeout] = field(default_factory=set)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def bound(self) -> asyncio.Timeout:
        """A timeout scope for one request: unbounded until `drain` sets the deadline, then
        it expires at that deadline. Enter it, then `track` it until the request is done."""
        return asyncio.timeout_at(self.deadline)

    def track(self, bound: asyncio.Timeout) -> None:
        self._bounds.add(bound)

    def untrack(self, bound: asyncio.Timeout) -> None:
        self._bounds.discard(bound)
        if self.draining and not self._bounds:
            self._idle.set()

    def drain(self, deadline: float) -> None:
        """Start draining (the only place that does): every request now in progress or still
        to come must be answered by `deadline`."""
        self.draining = True
        self.deadline = deadline
        for bound in self._bounds:
            bound.reschedule(deadline)
        if not self._bounds:
            self._idle.set()

    @property
    def in_progress(self) -> int:
        return len(self._bounds)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in progress (after `drain`); False if `timeout` ran out."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
