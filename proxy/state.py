"""Run-time state of one proxy app: whether it is draining, the one shutdown deadline, the
requests in progress, and the open WebSockets to close."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web

from .batching.clock import Recent

FOLLOW_UP_WITHIN: Final = 0.25  # seconds after an answer on a connection (a busy machine's)


class FollowUps:
    """Which requests a client had queued: a browser keeps at most six HTTP/1.1 connections to
    a host and sends its next request on one the moment its answer is in. A request on a
    connection that carried an answer less than FOLLOW_UP_WITHIN ago is one (a follow-up:
    `Batcher.submit(follow_up=True)`, docs/design.md, Flush policy)."""

    def __init__(self) -> None:
        self._answered = Recent[int](FOLLOW_UP_WITHIN)  # connection -> its last answer
        # How long clients take to send a follow-up, lately: a peak that decays by a fifth at
        # each follow-up (Chromium on a busy machine: 6-60 ms; aiohttp: about 1 ms).
        self.delay = 0.0

    def arrived(self, request: web.Request) -> None:
        """Learn from every request, batchable or not, that follows an answer on its
        connection: a browser's list refreshes teach the delay before its first burst."""
        now = asyncio.get_running_loop().time()
        if (last := self._answered.at(id(request.protocol), now)) is not None:
            self.delay = max(now - last, 0.8 * self.delay)

    def follows(self, request: web.Request) -> float | None:
        """None, or how long clients take to send a follow-up lately, if `request` is one."""
        now = asyncio.get_running_loop().time()
        return None if self._answered.at(id(request.protocol), now) is None else self.delay

    def answered(self, request: web.Request) -> None:
        self._answered.note(id(request.protocol), asyncio.get_running_loop().time())


@dataclass(eq=False, slots=True)
class State:
    draining: bool = False  # readiness fails, new batchable requests pass through
    follow_ups: FollowUps = field(default_factory=FollowUps)
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

    async def wait_idle(self, deadline: float) -> bool:
        """Wait until no request is in progress (after `drain`); False if `deadline` (loop
        time) came first."""
        try:
            async with asyncio.timeout_at(deadline):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
