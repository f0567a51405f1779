"""Run-time state of one proxy app: whether it is draining, the one shutdown deadline, the
requests in progress, and the open WebSockets to close."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web


@dataclass(eq=False, slots=True)
class State:
    draining: bool = False  # readiness fails, new batchable requests pass through
    websockets: set[web.WebSocketResponse] = field(default_factory=set)
    _requests: set[asyncio.Task[object]] = field(default_factory=set)  # handler tasks
    _expired: set[asyncio.Task[object]] = field(default_factory=set)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    _timer: asyncio.TimerHandle | None = None

    def enter(self) -> asyncio.Task[object]:
        """Count the current handler task as a request in progress until `leave`.

        Cheaper than a timeout scope per request (a set insert); the deadline is set on the
        few tasks still running when draining starts."""
        task = asyncio.current_task()
        assert task is not None
        self._requests.add(task)
        return task

    def leave(self, task: asyncio.Task[object]) -> None:
        self._requests.discard(task)
        if self.draining and not self._requests:
            self._idle.set()

    def expired(self, task: asyncio.Task[object]) -> bool:
        """Whether `task` was cancelled because the drain deadline came; if so, the
        cancellation is withdrawn, so the handler can still answer."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        task.uncancel()
        return True

    def cut_by_deadline(self, task: asyncio.Task[object]) -> bool:
        """Whether `task` was cancelled because the drain deadline came (not by its client)."""
        return task in self._expired

    def drain(self, deadline: float) -> None:
        """Start draining (the only place that does): every request in progress, or still
        arriving on an open connection, is cancelled at `deadline` (loop time) if not done."""
        self.draining = True
        self._timer = asyncio.get_running_loop().call_at(deadline, self._expire)
        if not self._requests:
            self._idle.set()

    def _expire(self) -> None:
        for task in self._requests:
            self._expired.add(task)
            task.cancel("the drain deadline came")

    @property
    def in_progress(self) -> int:
        return len(self._requests)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in progress (after `drain`); False if `timeout` ran out."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
