"""A count of upstream slots with a bounded wait: a plain integer on the way in and out when
one is free (the path every request takes), a queue of waiters only when none is."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class Slots:
    def __init__(self, size: int | None) -> None:
        """`size` slots, or as many as are asked for when None."""
        self._free = size if size is not None else -1
        self._unbounded = size is None
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take_now(self) -> bool:
        """Take a free slot if there is one, without waiting (and without a coroutine)."""
        if self._unbounded:
            return True
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def take(self, timeout: float) -> bool:
        """Take a slot, waiting at most `timeout` seconds for one; False if none came."""
        if self.take_now():
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter  # give() hands its slot straight over
            return True
        except TimeoutError:
            if _handed(waiter):  # handed over just as the wait ran out: keep it
                return True
            self._forget(waiter)
            return False
        except BaseException:  # cancelled: a slot handed over goes back
            if _handed(waiter):
                self.give()
            else:
                self._forget(waiter)
            raise

    def give(self) -> None:
        """Give a slot back, to the longest waiter if there is one."""
        if self._unbounded:
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)


def _handed(waiter: asyncio.Future[None]) -> bool:
    return waiter.done() and not waiter.cancelled()
