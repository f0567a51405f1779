"""When a waiting batch becomes due: at once, after a window (`window`, `adaptive`), or when
`quiet`'s gathering ends (a quiet gap, a browser's first wave, a follow-up's hold); and what a
landing changes for the batches behind it (docs/design.md, Flush policy). The batcher owns the
queues and the flights; this decides only when a batch may leave, and tells it through
`advance`."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from .clock import TIMER_SLACK, Clock
from .policy import FlushPolicy, FlushReason
from .waiting import InAir, KeyQueue, WaitingBatch

K = TypeVar("K", bound=Hashable)
T = TypeVar("T", bound=Hashable)
R = TypeVar("R")
C = TypeVar("C")

HOLD_WINDOWS = 2  # `quiet`: a follow-up waits this many windows at least for its siblings,
HOLD_CALLS = 2.0  # or until they have flown this many calls, if that is later,
FOLLOW_UP_MARGIN = 3.0  # and then this many times its clients' recent follow-up delay


class Readiness(Generic[K, T, R, C]):
    """Sets `due` on waiting batches, by the policy, and calls the batcher's `advance(state)`
    when one is; hands it a batch stuck behind a silent flight for `max_wait` (`expired`)."""

    def __init__(
        self,
        policy: FlushPolicy[K],
        clock: Clock,
        window: float,
        max_wait: float,
        family: Callable[[K], Hashable],
        advance: Callable[[KeyQueue[K, T, R, C]], None],
        expired: Callable[[KeyQueue[K, T, R, C], WaitingBatch[K, T, R, C]], None],
    ) -> None:
        self._policy, self._clock, self._window = policy, clock, window
        self._max_wait, self._family = max_wait, family
        self.advance, self.expired = advance, expired

    def opened(
        self,
        batch: WaitingBatch[K, T, R, C],
        state: KeyQueue[K, T, R, C],
        now: float,
        follow_up: float | None,
    ) -> None:
        """A new batch: due at once on an idle key, or once it has gathered or its window passed."""
        if self._policy.beside and (state.flights or self._policy.waits_window(batch.key, now)):
            self._gather(batch, state, now, follow_up)
        elif self._policy.waits_window(batch.key, now):
            self._start_window(batch, state)
        else:
            batch.due = FlushReason.IDLE
        expiry = self._clock.call_later(self._max_wait, lambda: self._max_wait_check(batch, state))
        batch.timers.append(expiry)

    def joined(
        self,
        batch: WaitingBatch[K, T, R, C],
        state: KeyQueue[K, T, R, C],
        now: float,
        *,
        full: bool,
    ) -> None:
        """A member joined `batch` (which just became due if `full`)."""
        if batch.await_first and not batch.holding and batch.due is None:
            # The first follow-up since the flights it held for landed: the rest of their
            # callers' follow-ups come with it, a linger at most.
            batch.await_first, batch.quiet_from = 0.0, now
            self._arm(batch, state, now)
        if batch.expect and batch.waiters >= batch.expect and not batch.holding:
            # Every caller it waited for has sent its follow-up: no linger for stragglers.
            batch.expect, batch.await_first, batch.linger = 0, 0.0, 0.0
            if batch.due is None:
                self._arm(batch, state, now)
        if batch.leader is None:
            return
        batch.leader.company += 1
        if not full and self._policy.wave_whole(batch.leader.company):
            # A browser's whole first wave is in, however long it took to come: a quiet gap
            # now, and a window from here at most.
            batch.deadline = max(batch.deadline, now + self._window)
            self._arm(batch, state, now)

    def landed(self, key: K, state: KeyQueue[K, T, R, C], flight: InAir, now: float) -> None:
        """`flight` of `key` landed (and is out of `state.flights`): what the policy learns
        from it, and the batches behind it."""
        state.last_call = took = now - flight.started
        self._policy.flown(self._family(key), took)
        self._policy.landed(key, now, flight.callers)
        if self._policy.beside:
            for batch in state.waiting:
                if batch.leader is flight:  # its burst's leader landed: a quiet gap now
                    batch.leader = None
                    if batch.due is None:
                        self._arm(batch, state, now)
                if batch.expect and flight.started > batch.opened_at:
                    batch.expect += flight.callers  # their follow-ups come to it too
                if flight in batch.holding:
                    batch.holding.remove(flight)
                    if not batch.holding and batch.due is None:
                        # Their callers' follow-ups: the first may take a while on a busy
                        # machine (Chromium: 18 ms, where one had come in 3), the rest come
                        # with it.
                        batch.quiet_from = now
                        wait = batch.await_first + max(batch.linger, self._policy.quiet_gap)
                        batch.deadline = max(batch.deadline, now + wait)
                        self._arm(batch, state, now)
            return
        head = state.waiting[0] if state.waiting else None
        if head is None or head.due is FlushReason.CLOSE:
            pass  # nothing waits, or it leaves at once
        elif head.due is not FlushReason.FULL and self._policy.lingers(key, now):
            # The callers just answered tend to send their next request at once (an HTTP/1.1
            # browser reuses its connection): one window gathers them too, so the burst's
            # rounds stay in step instead of alternating lone and gathered calls.
            head.due = None
            self._start_window(head, state)
        elif head.due is not None:
            head.due = FlushReason.AFTER_FLIGHT

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
            batch.leader = next((f for f in reversed(state.flights) if f.led), None)
        else:
            # The callers of the key's other flights, which started with the one that answered
            # this caller but land later (dstack 0.18.40: 0.21-0.29 s for a stop, one run or
            # five, more on a busy machine; a browser's first wave may leave 0.1 s after its
            # leader), send their next requests too when they land: it waits for those
            # flights, each up to HOLD_CALLS calls from its own start, then for the
            # first of those requests (`most`), then as long as such clients take to send one.
            batch.holding = [f for f in state.flights if f.started < landed]
            batch.quiet_from = landed
            # How long a call takes: the one that just landed says it best for its siblings
            # (the moving average also learns from calls that fail fast, or name no live run).
            call = max(self._policy.expected_call(self._family(batch.key)) or 0.0, state.last_call)
            hold_end = now
            most = max(HOLD_WINDOWS * self._window, call / 2)
            if batch.holding:
                latest = max(f.started for f in batch.holding)
                hold_end = max(now + HOLD_WINDOWS * self._window, latest + HOLD_CALLS * call)
                batch.await_first = most
            # The callers whose follow-ups make the round: answered lately, this one's among
            # them, and those of the key's flights in the air (and, as they land, of the
            # flights that leave after it opened: `landed`). Once they are in, it goes; until
            # then it waits two windows at least (Chromium on a busy machine: the rest of a
            # round 18 ms after its first), however quick its clients' follow-ups were lately.
            answered = self._policy.answered(batch.key, now)
            batch.expect = answered and answered + sum(f.callers for f in state.flights)
            batch.linger = min(FOLLOW_UP_MARGIN * follow_up, most)
            if batch.expect:
                batch.linger = max(batch.linger, HOLD_WINDOWS * self._window)
            batch.deadline = hold_end + max(batch.linger, self._policy.quiet_gap)
        self._arm(batch, state, now)

    def _quiet_due(self, batch: WaitingBatch[K, T, R, C]) -> tuple[float, float]:
        """When a gathering batch is due (`quiet`), and its deadline: a gap after its last
        arrival and after the landing it waits for, and never later than its deadline; longer
        for what may be a browser's first wave, while its leader is in the air
        (`FlushPolicy.wave`)."""
        if batch.holding:
            return batch.deadline, batch.deadline
        if batch.await_first:  # for the first follow-up of the flights it held for
            return min(batch.deadline, batch.quiet_from + batch.await_first), batch.deadline
        gap, deadline = self._policy.quiet_gap, batch.deadline
        if batch.leader is not None and (
            wave := self._policy.wave(batch.leader.started, batch.last_at, batch.leader.company)
        ):
            gap, deadline = wave, math.inf  # until a pause, or the leader lands
        return min(deadline, max(batch.last_at + gap, batch.quiet_from + batch.linger)), deadline

    def _arm(
        self, batch: WaitingBatch[K, T, R, C], state: KeyQueue[K, T, R, C], now: float
    ) -> None:
        if batch.window is not None:
            batch.window.cancel()
        delay = max(self._quiet_due(batch)[0] - now, 0.0)
        batch.window = self._clock.call_later(delay, lambda: self._quiet_check(batch, state))
        batch.timers.append(batch.window)

    def _quiet_check(self, batch: WaitingBatch[K, T, R, C], state: KeyQueue[K, T, R, C]) -> None:
        if batch not in state.waiting or batch.due is not None:
            return
        now = self._clock.now()
        due, deadline = self._quiet_due(batch)
        if now + TIMER_SLACK < due:  # members arrived since it was armed: gather on
            self._arm(batch, state, now)
            return
        batch.due = FlushReason.WINDOW if due >= deadline else FlushReason.QUIET
        self.advance(state)

    def _start_window(self, batch: WaitingBatch[K, T, R, C], state: KeyQueue[K, T, R, C]) -> None:
        if batch.window is not None:
            batch.window.cancel()
        batch.window = self._clock.call_later(self._window, lambda: self._window_over(batch, state))
        batch.timers.append(batch.window)

    def _window_over(self, batch: WaitingBatch[K, T, R, C], state: KeyQueue[K, T, R, C]) -> None:
        if batch in state.waiting and batch.due is None:
            batch.due = FlushReason.WINDOW
            self.advance(state)

    def _max_wait_check(self, batch: WaitingBatch[K, T, R, C], state: KeyQueue[K, T, R, C]) -> None:
        """A batch that has waited `max_wait` expires only if it is due and a flight of its key
        in the air has heard nothing from the upstream for `max_wait` (stuck); a flight whose
        calls keep being answered, however many, never makes it expire."""
        if batch not in state.waiting:
            return
        now = self._clock.now()
        heard = min((f.heard for f in state.flights), default=now)
        if batch.due is None or now - heard < self._max_wait - TIMER_SLACK:
            again = max(heard + self._max_wait - now, self._window)
            batch.timers.append(
                self._clock.call_later(again, lambda: self._max_wait_check(batch, state))
            )
            return
        self.expired(state, batch)
