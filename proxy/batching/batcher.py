"""A generic batcher: key -> waiting batch -> one flight per key -> each member's own result.

It knows nothing of HTTP or dstack. Members submitted under one key go to one call of `flush`,
and every submitter gets the result for its own member, the moment `flush` resolves it.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Hashable, Iterable
from functools import partial
from typing import Generic, TypeVar

from .clock import Clock, LoopClock
from .policy import FlushPolicy, FlushReason, Policy
from .readiness import Readiness
from .waiting import (
    ClosedBatch,
    ExpireFn,
    FlushFn,
    InAir,
    KeyQueue,
    Waiters,
    WaitingBatch,
    drop,
    fly,
    its_own_name,
    no_names,
    one_family,
    settle,
)

__all__ = ["Batcher", "BatcherClosed", "ClosedBatch", "FlushReason", "Policy"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T", bound=Hashable)
R = TypeVar("R")
C = TypeVar("C")


class BatcherClosed(RuntimeError):
    """submit() after aclose(): the caller should do the work some other way."""


class Batcher(Generic[K, T, R, C]):
    """Batches members per key into calls of `flush`: one flight per key at a time, or under
    `quiet` one per name (a key's flights in the air together share no member's name).

    A batch leaves when it is due (`Readiness`, by the policy) and no flight stops it; members
    arriving meanwhile wait (group commit). At `max_size` members a batch is due and later ones
    start the next. A due batch behind a flight silent for `max_wait` is never sent: its
    submitters get `expire(batch)`. Flushes run in tasks of their own, so a cancelled submitter
    never cancels the shared call. A caller may also `lead` an idle key: make the key's flight
    itself, while later members wait for it.
    """

    def __init__(
        self,
        flush: FlushFn[K, T, C, R],
        *,
        window: float,
        max_size: int,
        max_wait: float,
        expire: ExpireFn[K, T, C],
        policy: Policy = Policy.WINDOW,
        clock: Clock | None = None,
        quiet: float = 0.0,
        names: Callable[[T], Iterable[Hashable]] | None = None,
        family: Callable[[K], Hashable] | None = None,
    ) -> None:
        self._flush, self._expire = flush, expire
        self._policy = FlushPolicy[K](policy, window=window, quiet=quiet)
        self._max_size = max_size
        # Under `quiet`, flights of one key share no name; `names` says what a member names.
        self._names = (names or its_own_name) if self._policy.beside else no_names
        self._clock = clock or LoopClock()
        self._due = Readiness[K, T, R, C](
            self._policy,
            self._clock,
            window,
            max(max_wait, window),
            family or one_family,  # keys whose calls take alike long
            self._advance,
            self._expired,
        )
        # Mutated only in synchronous code (no await between lookup and change), so no lock.
        # A key is present while it has a waiting batch or a flight, removed when it has neither.
        self._keys: dict[K, KeyQueue[K, T, R, C]] = {}
        # Running flushes and the futures each will resolve; awaited (or abandoned) by aclose().
        self._tasks: dict[asyncio.Task[None], Waiters[T, R]] = {}
        self._leads: set[asyncio.Future[None]] = set()  # flights made by callers (`lead`)
        self._pending = 0  # submitters still waiting for an answer
        self._closed = False

    @property
    def pending(self) -> int:
        """Submitters waiting for their result (a gauge)."""
        return self._pending

    @property
    def keys(self) -> int:
        """Keys with a batch waiting or a flight in the air (a gauge)."""
        return len(self._keys)

    async def submit(
        self, key: K, member: T, context: Callable[[], C], *, follow_up: float | None = None
    ) -> R:
        """Add `member` to `key`'s batch and wait for its result (or raise its error). If this
        member opens a batch, `context()` is what travels with it (for the flush; never
        compared): called then only, so a member that joins a batch builds none. A
        `follow_up` is a request its client had queued, with how long such clients take to
        send one after an answer (`quiet`: see FlushPolicy)."""
        if self._closed:
            raise BatcherClosed("batcher is closed")
        future = self._enqueue(key, member, context, follow_up)
        del context  # not kept for as long as the member waits: thousands may be waiting
        self._pending += 1
        try:
            # This submitter's own future: cancelling it leaves the others' alone.
            result = await future
        finally:
            self._pending -= 1
        if isinstance(result, BaseException):
            raise result
        return result

    def lead(self, key: K, member: T, *, follow_up: bool = False) -> Callable[[], None] | None:
        """Claim idle `key`'s flight for a call the caller makes itself, naming `member`, if the
        policy would send at once anyway; members arriving meanwhile wait for it as for any
        flight. Returns the function to call once that call is over, or None (submit instead).
        A `follow_up` is a request its client had queued (see `submit`)."""
        now = self._clock.now()
        if self._closed or key in self._keys or not self._policy.may_lead(key, now):
            return None
        state = self._keys[key] = KeyQueue()
        flight = InAir(frozenset(self._names(member)), now, led=True)
        state.flights.append(flight)
        if follow_up:
            self._policy.followed_up(key, now)
        landed = asyncio.get_running_loop().create_future()
        self._leads.add(landed)

        def land() -> None:
            if not landed.done():
                landed.set_result(None)
                self._leads.discard(landed)
                self._landed(key, state, flight)

        return land

    async def aclose(
        self, deadline: float | None = None, abandon: BaseException | None = None
    ) -> None:
        """Refuse new members, make every waiting batch due, and wait for every flight.

        At `deadline` (the running loop's time) every submitter still without a result, in a
        flight or in a batch queued behind one, gets `abandon` (or a TimeoutError) instead;
        queued batches are then never sent, and the flights in the air go on unwatched.
        """
        self._closed = True
        for state in list(self._keys.values()):
            for batch in state.waiting:
                batch.due = FlushReason.CLOSE
            self._advance(state)
        loop = asyncio.get_running_loop()  # real time: this bounds a real shutdown
        while (self._tasks or self._leads) and (deadline is None or loop.time() < deadline):
            left = None if deadline is None else deadline - loop.time()
            await asyncio.wait([*self._tasks, *self._leads], timeout=left)
        error = abandon or TimeoutError("batcher closed before the answer")
        for futures in self._tasks.values():
            settle(futures, error)
        for key, state in list(self._keys.items()):
            while state.waiting:
                drop(state.waiting.popleft(), error)
            self._forget_key(key, state)

    def _enqueue(
        self, key: K, member: T, context: Callable[[], C], follow_up: float | None = None
    ) -> asyncio.Future[R | BaseException]:
        now = self._clock.now()
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = KeyQueue()
        else:  # the key has a flight or a waiting batch: company
            self._policy.had_company(key, now)
        batch = state.waiting[-1] if state.waiting else None
        if batch is None or (len(batch.futures) >= self._max_size and member not in batch.futures):
            batch = self._open(key, state, context(), now, follow_up)
        future = batch.add(member, now, self._names(member))
        if follow_up is not None:  # counted once the batch it may open has taken its count
            self._policy.followed_up(key, now)
        full = len(batch.futures) >= self._max_size and batch.due is None
        if full:
            batch.due = FlushReason.FULL
        self._due.joined(batch, state, now, full=full)
        self._advance(state)
        return future

    def _open(
        self,
        key: K,
        state: KeyQueue[K, T, R, C],
        context: C,
        now: float,
        follow_up: float | None,
    ) -> WaitingBatch[K, T, R, C]:
        batch: WaitingBatch[K, T, R, C] = WaitingBatch(key, context, now, now)
        state.waiting.append(batch)
        self._due.opened(batch, state, now, follow_up)
        return batch

    def _advance(self, state: KeyQueue[K, T, R, C]) -> None:
        """Start flights while the key's oldest batch is due and no flight stops it: any flight
        (one flight per key), or under `quiet` one that carries one of its names."""
        while state.waiting and (batch := state.waiting[0]).due is not None:
            if state.clashes(batch.names) if self._policy.beside else state.flights:
                return
            state.waiting.popleft()
            for timer in batch.timers:
                timer.cancel()
            now = self._clock.now()
            flight = InAir(frozenset(batch.names), now, callers=batch.waiters)
            state.flights.append(flight)
            hear = partial(flight.hear_at, self._clock)
            closed = batch.closed(batch.due, now, hear)
            landed = partial(self._landed, batch.key, state, flight)
            # A fresh context: the first submitter's log context must not stamp the whole batch.
            task = asyncio.get_running_loop().create_task(
                fly(self._flush, closed, batch.futures, hear, landed), context=contextvars.Context()
            )
            self._tasks[task] = batch.futures
            task.add_done_callback(self._tasks.pop)

    def _expired(self, state: KeyQueue[K, T, R, C], batch: WaitingBatch[K, T, R, C]) -> None:
        """Behind a stuck flight for `max_wait`: never sent, its submitters get `expire`."""
        state.waiting.remove(batch)
        closed = batch.closed(FlushReason.MAX_WAIT, self._clock.now())
        drop(batch, self._expire(closed))
        self._forget_key(batch.key, state)

    def _forget_key(self, key: K, state: KeyQueue[K, T, R, C]) -> None:
        if not state.waiting and not state.flights and self._keys.get(key) is state:
            del self._keys[key]

    def _landed(self, key: K, state: KeyQueue[K, T, R, C], flight: InAir) -> None:
        """A flight of the key is over: the batches behind it may leave."""
        state.flights.remove(flight)
        self._due.landed(key, state, flight, self._clock.now())
        self._advance(state)
        self._forget_key(key, state)
