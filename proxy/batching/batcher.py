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
from .waiting import (
    ClosedBatch,
    ExpireFn,
    FlushFn,
    InAir,
    KeyQueue,
    Waiters,
    WaitingBatch,
    deliver,
    drop,
    settle,
)

__all__ = ["Batcher", "BatcherClosed", "ClosedBatch", "FlushReason", "Policy"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T", bound=Hashable)
R = TypeVar("R")
C = TypeVar("C")


HOLD_WINDOWS = 2  # `quiet`: a follow-up waits this many windows at least for its siblings
FOLLOW_UP_MARGIN = 3.0  # and then this many times its clients' recent follow-up delay
_TIMER_SLACK = 1e-4  # a loop's timer may fire this much early (its clock's resolution)


def _itself(member: Hashable) -> tuple[Hashable]:
    return (member,)


def _nothing(member: Hashable) -> tuple[()]:
    return ()


def _one_family(key: Hashable) -> None:
    return None


class BatcherClosed(RuntimeError):
    """submit() after aclose(): the caller should do the work some other way."""


class Batcher(Generic[K, T, R, C]):
    """Batches members per key into calls of `flush`, with one flight per key at a time.

    A batch leaves when the policy says it is due and the key has no flight; members arriving
    during a flight wait for it (group commit). At `max_size` members a batch is due and later
    members start the next one. A batch still waiting `max_wait` after its first member, due but
    behind a flight that has heard nothing from the upstream for `max_wait` (stuck), is never
    sent: its submitters get `expire(batch)`. Flushes run in tasks of
    their own, so a cancelled submitter never cancels the shared call. A caller may also `lead`
    an idle key: make the key's flight itself, while later members wait for it.
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
        self._window, self._max_size = window, max_size
        # Under `quiet`, flights of one key share no name; `names` says what a member names.
        self._names = (names or _itself) if self._policy.beside else _nothing
        self._family = family or _one_family  # keys whose calls take alike long
        self._max_wait = max(max_wait, window)
        self._clock = clock or LoopClock()
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

    def lead(self, key: K, member: T) -> Callable[[], None] | None:
        """Claim idle `key`'s flight for a call the caller makes itself, naming `member`, if the
        policy would send at once anyway; members arriving meanwhile wait for it as for any
        flight. Returns the function to call once that call is over, or None (submit instead)."""
        now = self._clock.now()
        if self._closed or key in self._keys or not self._policy.may_lead(key, now):
            return None
        state = self._keys[key] = KeyQueue()
        flight = InAir(frozenset(self._names(member)), now, led=True)
        state.flights.append(flight)
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
        if batch.leader is not None:
            batch.leader.company += 1
        if len(batch.futures) >= self._max_size and batch.due is None:
            batch.due = FlushReason.FULL
        elif batch.leader is not None and self._policy.wave_whole(batch.leader.company):
            # A browser's whole first wave is in, however long it took to come: a quiet gap
            # now, and a window from here at most.
            batch.deadline = max(batch.deadline, now + self._window)
            self._arm(batch, now)
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
        if self._policy.beside and (state.flights or self._policy.waits_window(key, now)):
            self._gather(batch, state, now, follow_up)
        elif self._policy.waits_window(key, now):
            self._start_window(batch)
        else:
            batch.due = FlushReason.IDLE
        expiry = self._clock.call_later(self._max_wait, lambda: self._on_max_wait(state, batch))
        batch.timers.append(expiry)
        return batch

    def _gather(
        self,
        batch: WaitingBatch[K, T, R, C],
        state: KeyQueue[K, T, R, C],
        now: float,
        follow_up: float | None,
    ) -> None:
        """`quiet`: the batch gathers until its arrivals pause (on a slow upstream, for a share
        of a call). If a follow-up opened it after a flight of its key landed, it waits for the
        flights that were in the air with that one (started before it landed) instead."""
        batch.deadline = now + self._window
        batch.quiet_from = now
        landed = self._policy.landed_at(batch.key, now)
        if follow_up is None or landed is None:  # the rest of a burst, maybe of a leader's
            led = (f for f in reversed(state.flights) if f.led)
            batch.leader = next((f for f in led if self._policy.led_burst(f.started, now)), None)
        else:
            # The callers of the key's other flights, which started with the one that answered
            # this caller but land later (dstack 0.18.40: 0.21-0.29 s for a stop, one run or
            # five, more on a busy machine), send their next requests too when they land: it
            # waits for those flights, then as long as such clients take to send one.
            batch.holding = [f for f in state.flights if f.started < landed]
            batch.quiet_from = landed
            call = self._policy.expected_call(self._family(batch.key)) or 0.0
            most = max(HOLD_WINDOWS * self._window, call / 2)  # what it may wait, at most
            batch.linger = min(FOLLOW_UP_MARGIN * follow_up, most)
            hold = most if batch.holding else 0.0
            batch.deadline = now + hold + max(batch.linger, self._policy.quiet_gap)
        self._arm(batch, now)

    def _quiet_due(self, batch: WaitingBatch[K, T, R, C]) -> tuple[float, float]:
        """When a gathering batch is due (`quiet`), and its deadline: a gap after its last
        arrival and after the landing it waits for, and never later than its deadline; longer
        for what may be a browser's first wave, while its leader is in the air
        (`FlushPolicy.wave`)."""
        if batch.holding:
            return batch.deadline, batch.deadline
        gap, deadline = self._policy.quiet_gap, batch.deadline
        if batch.leader is not None and (
            wave := self._policy.wave(batch.leader.started, batch.last_at, batch.leader.company)
        ):
            gap, deadline = wave[0], max(deadline, wave[1])
        return min(deadline, max(batch.last_at + gap, batch.quiet_from + batch.linger)), deadline

    def _arm(self, batch: WaitingBatch[K, T, R, C], now: float) -> None:
        if batch.window is not None:
            batch.window.cancel()
        delay = max(self._quiet_due(batch)[0] - now, 0.0)
        batch.window = self._clock.call_later(delay, lambda: self._quiet_check(batch))
        batch.timers.append(batch.window)

    def _quiet_check(self, batch: WaitingBatch[K, T, R, C]) -> None:
        state = self._keys.get(batch.key)
        if state is None or batch not in state.waiting or batch.due is not None:
            return
        now = self._clock.now()
        due, deadline = self._quiet_due(batch)
        if now + _TIMER_SLACK < due:  # members arrived since it was armed: gather on
            self._arm(batch, now)
            return
        batch.due = FlushReason.WINDOW if due >= deadline else FlushReason.QUIET
        self._advance(state)

    def _start_window(self, batch: WaitingBatch[K, T, R, C]) -> None:
        if batch.window is not None:
            batch.window.cancel()
        batch.window = self._clock.call_later(self._window, lambda: self._due(batch))
        batch.timers.append(batch.window)

    def _due(self, batch: WaitingBatch[K, T, R, C]) -> None:
        state = self._keys.get(batch.key)
        if state is not None and batch in state.waiting and batch.due is None:
            batch.due = FlushReason.WINDOW
            self._advance(state)

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
            flight = InAir(frozenset(batch.names), now)
            state.flights.append(flight)
            closed = batch.closed(batch.due, now, partial(self._hear, flight))
            # A fresh context: the first submitter's log context must not stamp the whole batch.
            task = asyncio.get_running_loop().create_task(
                self._fly(state, flight, closed, batch.futures), context=contextvars.Context()
            )
            self._tasks[task] = batch.futures
            task.add_done_callback(self._tasks.pop)

    def _hear(self, flight: InAir) -> None:
        flight.hear(self._clock.now())

    def _on_max_wait(self, state: KeyQueue[K, T, R, C], batch: WaitingBatch[K, T, R, C]) -> None:
        """A batch that has waited `max_wait` is answered `expire` only if it is due and a flight
        of its key in the air has heard nothing from the upstream for `max_wait` (stuck); a
        flight whose calls keep being answered, however many, never makes it expire."""
        if batch not in state.waiting:
            return
        now = self._clock.now()
        heard = min((f.heard for f in state.flights), default=now)
        if batch.due is None or now - heard < self._max_wait - _TIMER_SLACK:
            again = max(heard + self._max_wait - now, self._window)
            batch.timers.append(
                self._clock.call_later(again, lambda: self._on_max_wait(state, batch))
            )
            return
        state.waiting.remove(batch)
        closed = batch.closed(FlushReason.MAX_WAIT, self._clock.now())
        drop(batch, self._expire(closed))
        self._forget_key(batch.key, state)

    def _forget_key(self, key: K, state: KeyQueue[K, T, R, C]) -> None:
        if not state.waiting and not state.flights and self._keys.get(key) is state:
            del self._keys[key]

    async def _fly(
        self,
        state: KeyQueue[K, T, R, C],
        flight: InAir,
        closed: ClosedBatch[K, T, C],
        futures: Waiters[T, R],
    ) -> None:
        def resolve(member: T, result: R | BaseException) -> None:
            flight.hear(self._clock.now())
            if (waiting := futures.get(member)) is not None:
                deliver(waiting, result)

        try:
            await self._flush(closed, resolve)
        except BaseException as exc:  # every waiter learns of it; nobody hangs
            settle(futures, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            for member, waiting in futures.items():
                deliver(waiting, LookupError(f"flush gave no result for {member!r}"))
            self._landed(closed.key, state, flight)

    def _landed(self, key: K, state: KeyQueue[K, T, R, C], flight: InAir) -> None:
        """A flight of the key is over: the batches behind it may leave."""
        state.flights.remove(flight)
        now = self._clock.now()
        self._policy.flown(self._family(key), now - flight.started)
        self._policy.landed(key, now)
        if self._policy.beside:
            for batch in state.waiting:
                if batch.leader is flight:  # its burst's leader landed: a quiet gap now
                    batch.leader = None
                    if batch.due is None:
                        self._arm(batch, now)
                if flight in batch.holding:
                    batch.holding.remove(flight)
                    if not batch.holding and batch.due is None:
                        batch.quiet_from = now
                        self._arm(batch, now)
            self._advance(state)
            self._forget_key(key, state)
            return
        head = state.waiting[0] if state.waiting else None
        if head is None or head.due is FlushReason.CLOSE:
            pass  # nothing waits, or it leaves at once
        elif head.due is not FlushReason.FULL and self._policy.lingers(key, now):
            # The callers just answered tend to send their next request at once (an HTTP/1.1
            # browser reuses its connection): one window gathers them too, so the burst's
            # rounds stay in step instead of alternating lone and gathered calls.
            head.due = None
            self._start_window(head)
        elif head.due is not None:
            head.due = FlushReason.AFTER_FLIGHT
        self._advance(state)
        self._forget_key(key, state)
