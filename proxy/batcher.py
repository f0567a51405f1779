"""A generic batcher: key -> open batch -> flush -> fan-out.

It knows nothing of HTTP or dstack: items submitted under one key within a window go to one call
of `flush`, and every submitter gets the result for its own item.
"""

# placeholder until batching lands: renamed from coalescing.py, with a per-batch `context`, and
# ClosedBatch.items renamed `members`.

from __future__ import annotations

import asyncio
import contextvars
import enum
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T", bound=Hashable)
R = TypeVar("R")
C = TypeVar("C")


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Time as the batcher sees it: injectable, so tests drive windows by hand."""

    def now(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer: ...


class LoopClock:
    """The running event loop's monotonic clock."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback)


class FlushReason(enum.StrEnum):
    WINDOW = "window"  # the window passed with nothing in flight
    FULL = "full"  # max_size items
    AFTER_FLIGHT = "after_flight"  # the window passed during a flight, which has now returned
    MAX_WAIT = "max_wait"  # the oldest item waited max_wait behind a slow flight
    CLOSE = "close"  # aclose()


class BatcherClosed(RuntimeError):
    """submit() after aclose(): the caller should do the work some other way."""


@dataclass(frozen=True, slots=True)
class ClosedBatch(Generic[K, T, C]):
    """What `flush` is given: the key and context as first submitted, the distinct members in
    arrival order."""

    key: K
    context: C
    members: list[T]
    waiters: int
    reason: FlushReason
    opened_at: float
    last_at: float
    closed_at: float


FlushFn = Callable[[ClosedBatch[K, T, C]], Awaitable[Mapping[T, R | BaseException]]]


@dataclass(eq=False, slots=True)
class _Batch(Generic[K, T, R, C]):
    key: K
    context: C
    opened_at: float
    last_at: float
    # Distinct items in arrival order; duplicates share one future.
    futures: dict[T, asyncio.Future[R | BaseException]] = field(default_factory=dict)
    waiters: int = 0
    due: bool = False  # its window has passed
    timer: Timer | None = None


@dataclass(eq=False, slots=True)
class _KeyState(Generic[K, T, R, C]):
    open: _Batch[K, T, R, C] | None = None
    flights: int = 0


class Batcher(Generic[K, T, R, C]):
    """Merges items per key into calls of `flush`, one flight per key at a time (group commit).

    A window opens with a key's first item and does not slide. When it ends the batch flushes,
    unless that key has a call in flight: then it flushes when the flight returns. A batch flushes
    at once at `max_size` items or when its oldest item has waited `max_wait`. The flush runs in a
    task of its own, so a cancelled submitter never cancels the shared call.
    """

    def __init__(
        self,
        flush: FlushFn[K, T, C, R],  # the alias orders its variables as they appear
        *,
        window: float,
        max_size: int,
        max_wait: float,
        clock: Clock | None = None,
    ) -> None:
        self._flush = flush
        self._window = window
        self._max_size = max_size
        self._max_wait = max(max_wait, window)
        self._clock = clock or LoopClock()
        # Mutated only in synchronous code (no await between lookup and change), so no lock.
        # A key is present while it has an open batch or a flight, and removed when it has neither.
        self._keys: dict[K, _KeyState[K, T, R, C]] = {}
        # Running flushes and the futures each will resolve; awaited (or abandoned) by aclose().
        self._tasks: dict[asyncio.Task[None], dict[T, asyncio.Future[R | BaseException]]] = {}
        self._pending = 0  # submitters still waiting for an answer
        self._closed = False

    @property
    def pending(self) -> int:
        """Submitters waiting for their result."""
        return self._pending

    @property
    def keys(self) -> int:
        """Keys with an open batch or a flight."""
        return len(self._keys)

    async def submit(self, key: K, item: T, context: C) -> R:
        """Add `item` to `key`'s open batch and wait for its result (or raise its error);
        `context` is kept only if this item opens the batch."""
        if self._closed:
            raise BatcherClosed("batcher is closed")
        future = self._enqueue(key, item, context)
        self._pending += 1
        try:
            # shield: cancelling one waiter must not cancel a future that others share.
            result = await asyncio.shield(future)
        finally:
            self._pending -= 1
        if isinstance(result, BaseException):
            raise result
        return result

    async def aclose(
        self, timeout: float | None = None, abandon: BaseException | None = None
    ) -> None:
        """Refuse new items, flush every open batch now, and wait for every flight.

        After `timeout` seconds every waiter still without a result gets `abandon` (or a
        TimeoutError) instead, so it can be answered; the flights themselves go on.
        """
        self._closed = True
        for state in list(self._keys.values()):
            if state.open is not None and state.flights == 0:
                self._close(state, FlushReason.CLOSE)
            elif state.open is not None:  # still one flight per key: it goes when that returns
                state.open.due = True
        loop = asyncio.get_running_loop()  # real time: this bounds a real shutdown
        deadline = None if timeout is None else loop.time() + timeout
        while self._tasks:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                break
            await asyncio.wait(list(self._tasks), timeout=left)
        for futures in self._tasks.values():
            for future in futures.values():
                if not future.done():
                    future.set_result(abandon or TimeoutError("batcher closed before the answer"))

    def _enqueue(self, key: K, item: T, context: C) -> asyncio.Future[R | BaseException]:
        now = self._clock.now()
        state = self._keys.setdefault(key, _KeyState())
        batch = state.open
        if batch is None:
            batch = state.open = _Batch(key, context, opened_at=now, last_at=now)
            batch.timer = self._clock.call_later(
                self._window, lambda: self._on_window(state, batch)
            )
        future = batch.futures.get(item)
        if future is None:
            future = batch.futures[item] = asyncio.get_running_loop().create_future()
        batch.waiters += 1
        batch.last_at = now
        if len(batch.futures) >= self._max_size:
            self._close(state, FlushReason.FULL)
        return future

    def _on_window(self, state: _KeyState[K, T, R, C], batch: _Batch[K, T, R, C]) -> None:
        if state.open is not batch:  # a late timer: the batch already went
            return
        batch.due = True
        if state.flights == 0:
            self._close(state, FlushReason.WINDOW)
            return
        left = batch.opened_at + self._max_wait - self._clock.now()
        batch.timer = self._clock.call_later(
            max(left, 0.0), lambda: self._on_max_wait(state, batch)
        )

    def _on_max_wait(self, state: _KeyState[K, T, R, C], batch: _Batch[K, T, R, C]) -> None:
        if state.open is batch:
            self._close(state, FlushReason.MAX_WAIT)

    def _close(self, state: _KeyState[K, T, R, C], reason: FlushReason) -> None:
        batch, state.open = state.open, None
        assert batch is not None
        if batch.timer is not None:
            batch.timer.cancel()
        state.flights += 1
        closed = ClosedBatch(
            batch.key,
            batch.context,
            list(batch.futures),
            batch.waiters,
            reason,
            batch.opened_at,
            batch.last_at,
            self._clock.now(),
        )
        # A fresh context: the first submitter's log context must not stamp the whole batch.
        task = asyncio.get_running_loop().create_task(
            self._fly(state, closed, batch.futures), context=contextvars.Context()
        )
        self._tasks[task] = batch.futures
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def _fly(
        self,
        state: _KeyState[K, T, R, C],
        closed: ClosedBatch[K, T, C],
        futures: dict[T, asyncio.Future[R | BaseException]],
    ) -> None:
        results: Mapping[T, R | BaseException] = {}
        try:
            results = await self._flush(closed)
        except BaseException as exc:  # every waiter learns of it; nobody hangs
            results = dict.fromkeys(futures, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            state.flights -= 1
            for item, future in futures.items():
                if not future.done():
                    missing = LookupError(f"flush returned no result for {item!r}")
                    future.set_result(results.get(item, missing))
            self._after_flight(state, closed.key)

    def _after_flight(self, state: _KeyState[K, T, R, C], key: K) -> None:
        if state.open is not None and state.open.due and state.flights == 0:
            self._close(state, FlushReason.AFTER_FLIGHT)
        elif state.open is None and state.flights == 0 and self._keys.get(key) is state:
            del self._keys[key]
