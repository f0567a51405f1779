"""The generic Batcher, driven by a hand-cranked clock: no sockets, no real sleeps.

Like DataLoader's `idLoader`, the fake flush records every batch it is given and answers each
member with `"<key>:<member>"`, so tests assert batch shapes ("[a, b] then [c]").
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import partial
from typing import Protocol

import pytest

from proxy.batching.batcher import Batcher, BatcherClosed, ClosedBatch, FlushReason, Policy

from .manual_clock import ManualClock, settle

WINDOW = 10.0
MAX_WAIT = 100.0
MAX_SIZE = 100

Result = str | BaseException
Closed = ClosedBatch[str, str, str]
Respond = Callable[[Closed], Awaitable[Mapping[str, Result]]]
Recorded = tuple[Batcher[str, str, str, str], list[Closed]]
"""A batcher and the list of batches its flush was given, in order."""


async def echo(batch: Closed) -> Mapping[str, Result]:
    return {member: f"{batch.key}:{member}" for member in batch.members}


class Expired(Exception):
    """What a batch that waited max_wait behind a flight gets."""


class MakeBatcher(Protocol):
    def __call__(
        self, respond: Respond = ..., *, max_size: int = ..., policy: Policy = ...
    ) -> Recorded: ...


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def gate() -> asyncio.Event:
    """Every flush waits on this; it starts open. Clear it to hold a flight in the air."""
    event = asyncio.Event()
    event.set()
    return event


@pytest.fixture
async def make_batcher(clock: ManualClock, gate: asyncio.Event) -> AsyncIterator[MakeBatcher]:
    made: list[Batcher[str, str, str, str]] = []

    def make(
        respond: Respond = echo, *, max_size: int = MAX_SIZE, policy: Policy = Policy.WINDOW
    ) -> Recorded:
        calls: list[Closed] = []

        async def flush(batch: Closed, resolve: Callable[[str, Result], None]) -> None:
            calls.append(batch)
            await gate.wait()
            for member, result in (await respond(batch)).items():
                resolve(member, result)

        batcher: Batcher[str, str, str, str] = Batcher(
            flush,
            window=WINDOW,
            max_size=max_size,
            max_wait=MAX_WAIT,
            expire=lambda batch: Expired(batch.members),
            policy=policy,
            clock=clock,
        )
        made.append(batcher)
        return batcher, calls

    yield make
    gate.set()
    for batcher in made:
        await asyncio.wait_for(batcher.aclose(), 1)


@pytest.fixture
def echo_batcher(make_batcher: MakeBatcher) -> Recorded:
    return make_batcher()


async def submit(
    batcher: Batcher[str, str, str, str], key: str, *members: str
) -> list[asyncio.Task[str]]:
    """Submit each member as its own caller; the context is `ctx-<member>`."""
    tasks = [asyncio.create_task(batcher.submit(key, m, partial(str, f"ctx-{m}"))) for m in members]
    await settle()
    return tasks


def shapes(calls: list[Closed]) -> list[list[str]]:
    return [batch.members for batch in calls]


def reasons(calls: list[Closed]) -> list[FlushReason]:
    return [batch.reason for batch in calls]


# Windows


async def test_members_within_the_window_share_one_flush_and_later_members_start_the_next(
    echo_batcher: Recorded, clock: ManualClock
) -> None:
    batcher, calls = echo_batcher
    first = await submit(batcher, "k", "a")
    clock.advance(4)
    first += await submit(batcher, "k", "b")
    clock.advance(WINDOW - 4 - 0.5)
    await settle()
    assert calls == []

    clock.advance(0.5)
    await settle()
    second = await submit(batcher, "k", "c")
    clock.advance(WINDOW)
    await settle()

    assert shapes(calls) == [["a", "b"], ["c"]]
    assert reasons(calls) == [FlushReason.WINDOW, FlushReason.WINDOW]
    assert [t.result() for t in first + second] == ["k:a", "k:b", "k:c"]


async def test_the_window_opens_with_the_first_item_and_does_not_slide(
    echo_batcher: Recorded, clock: ManualClock
) -> None:
    batcher, calls = echo_batcher
    await submit(batcher, "k", "a")
    for item in "bcd":  # one item every 3 s: a sliding window would never end
        clock.advance(3)
        await submit(batcher, "k", item)
    clock.advance(WINDOW - 9)
    await settle()

    assert shapes(calls) == [["a", "b", "c", "d"]]
    assert (calls[0].opened_at, calls[0].last_at, calls[0].closed_at) == (0, 9, WINDOW)


async def test_reaching_max_size_flushes_at_once_and_the_rest_goes_in_the_next_batch(
    make_batcher: MakeBatcher, clock: ManualClock
) -> None:
    batcher, calls = make_batcher(max_size=2)
    tasks = await submit(batcher, "k", "a", "b", "c")

    assert shapes(calls) == [["a", "b"]]
    assert reasons(calls) == [FlushReason.FULL]
    assert calls[0].closed_at == 0

    clock.advance(WINDOW)
    await settle()
    assert shapes(calls) == [["a", "b"], ["c"]]
    assert [t.result() for t in tasks] == ["k:a", "k:b", "k:c"]


# Keys


async def test_members_under_different_keys_never_share_a_flush(
    echo_batcher: Recorded, clock: ManualClock
) -> None:
    batcher, calls = echo_batcher
    x = await submit(batcher, "x", "a")
    y = await submit(batcher, "y", "a")
    x += await submit(batcher, "x", "b")
    clock.advance(WINDOW)
    await settle()

    assert sorted((b.key, b.members) for b in calls) == [("x", ["a", "b"]), ("y", ["a"])]
    assert [t.result() for t in x + y] == ["x:a", "x:b", "y:a"]


async def test_a_burst_on_one_key_does_not_delay_another_keys_window(
    make_batcher: MakeBatcher, clock: ManualClock
) -> None:
    batcher, calls = make_batcher(max_size=2)
    await submit(batcher, "quiet", "q")
    clock.advance(5)
    await submit(batcher, "busy", *"abcde")  # two FULL flushes, then [e] opens a window at t=5
    clock.advance(5)
    await settle()

    assert [(b.key, b.members, b.closed_at) for b in calls] == [
        ("busy", ["a", "b"], 5),
        ("busy", ["c", "d"], 5),
        ("quiet", ["q"], WINDOW),
    ]

    clock.advance(5)
    await settle()
    assert (calls[-1].key, calls[-1].members, calls[-1].closed_at) == ("busy", ["e"], 5 + WINDOW)


# Fan-out


async def test_duplicate_members_in_one_batch_are_flushed_once_and_every_caller_gets_the_result(
    echo_batcher: Recorded, clock: ManualClock
) -> None:
    batcher, calls = echo_batcher
    tasks = await submit(batcher, "k", "a", "b", "a")
    clock.advance(WINDOW)
    await settle()

    assert shapes(calls) == [["a", "b"]]
    assert calls[0].waiters == 3
    assert [t.result() for t in tasks] == ["k:a", "k:b", "k:a"]


async def test_an_exception_value_is_raised_only_to_the_callers_of_its_item(
    make_batcher: MakeBatcher, clock: ManualClock
) -> None:
    refused = PermissionError("b is not yours")

    async def respond(batch: Closed) -> Mapping[str, Result]:
        return {"a": "ok-a", "b": refused, "c": "ok-c"}

    batcher, _ = make_batcher(respond)
    a, b1, c, b2 = await submit(batcher, "k", "a", "b", "c", "b")
    clock.advance(WINDOW)
    await settle()

    assert (a.result(), c.result()) == ("ok-a", "ok-c")
    assert b1.exception() is refused
    assert b2.exception() is refused


async def test_a_flush_that_raises_reaches_every_waiter_and_the_key_recovers(
    make_batcher: MakeBatcher, clock: ManualClock
) -> None:
    down = ConnectionError("upstream down")
    failing = True

    async def respond(batch: Closed) -> Mapping[str, Result]:
        if failing:
            raise down
        return await echo(batch)

    batcher, calls = make_batcher(respond)
    tasks = await submit(batcher, "k", "a", "b", "a")
    clock.advance(WINDOW)
    await settle()
    assert [t.exception() for t in tasks] == [down, down, down]

    failing = False
    (later,) = await submit(batcher, "k", "c")
    clock.advance(WINDOW)
    await settle()
    assert later.result() == "k:c"
    assert shapes(calls) == [["a", "b"], ["c"]]


async def test_an_item_missing_from_the_flush_result_gives_its_caller_a_lookup_error(
    make_batcher: MakeBatcher, clock: ManualClock
) -> None:
    async def respond(batch: Closed) -> Mapping[str, Result]:
        return {"a": "ok-a"}

    batcher, _ = make_batcher(respond)
    a, b = await submit(batcher, "k", "a", "b")
    clock.advance(WINDOW)
    await settle()

    assert a.result() == "ok-a"
    assert b.done(), "the caller of a forgotten item must not hang"
    assert isinstance(b.exception(), LookupError)


# Cancellation


async def test_a_caller_cancelled_before_the_flush_leaves_its_item_in_the_batch(
    echo_batcher: Recorded, clock: ManualClock
) -> None:
    batcher, calls = echo_batcher
    gone_a, kept_a, gone_b, kept_c = await submit(batcher, "k", "a", "a", "b", "c")
    gone_a.cancel()
    gone_b.cancel()
    await settle()
    assert batcher.pending == 2

    clock.advance(WINDOW)
    await settle()

    assert shapes(calls) == [["a", "b", "c"]]
    assert gone_a.cancelled() and gone_b.cancelled()
    assert (kept_a.result(), kept_c.result()) == ("k:a", "k:c")
    assert batcher.pending == 0


async def test_a_caller_cancelled_during_the_flight_does_not_cancel_the_shared_flush(
    make_batcher: MakeBatcher, clock: ManualClock, gate: asyncio.Event
) -> None:
    finished: list[list[str]] = []

    async def respond(batch: Closed) -> Mapping[str, Result]:
        finished.append(batch.members)
        return await echo(batch)

    batcher, calls = make_batcher(respond)
    gate.clear()
    gone, kept_a, kept_b = await submit(batcher, "k", "a", "a", "b")
    clock.advance(WINDOW)
    await settle()
    assert shapes(calls) == [["a", "b"]]

    gone.cancel()
    await settle()
    gate.set()
    await settle()

    assert finished == [["a", "b"]]
    assert gone.cancelled()
    assert (kept_a.result(), kept_b.result()) == ("k:a", "k:b")


# One flight per key (group commit) and max_wait


async def test_members_arriving_during_a_flight_go_together_when_it_returns(
    make_batcher: MakeBatcher, clock: ManualClock, gate: asyncio.Event
) -> None:
    flying: dict[str, int] = {}
    most_flying = 0

    async def respond(batch: Closed) -> Mapping[str, Result]:
        nonlocal most_flying
        flying[batch.key] = flying.get(batch.key, 0) + 1
        most_flying = max(most_flying, flying[batch.key])
        await asyncio.sleep(0)
        flying[batch.key] -= 1
        return await echo(batch)

    batcher, calls = make_batcher(respond)
    gate.clear()
    await submit(batcher, "k", "a")
    clock.advance(WINDOW)  # [a] takes off and is held by the gate
    await settle()
    await submit(batcher, "k", "b")
    clock.advance(3)
    await submit(batcher, "k", "c")
    clock.advance(3 * WINDOW)  # b's and c's windows pass while [a] is in the air
    await settle()
    assert shapes(calls) == [["a"]]

    gate.set()
    await settle()
    assert shapes(calls) == [["a"], ["b", "c"]]
    assert reasons(calls) == [FlushReason.WINDOW, FlushReason.AFTER_FLIGHT]
    assert most_flying == 1

    clock.advance(2 * MAX_WAIT)  # the cancelled max_wait timer must not fire a third flush
    await settle()
    assert len(calls) == 2


async def test_an_item_arriving_during_a_short_flight_still_waits_for_its_own_window(
    make_batcher: MakeBatcher, clock: ManualClock, gate: asyncio.Event
) -> None:
    batcher, calls = make_batcher()
    gate.clear()
    await submit(batcher, "k", "a")
    clock.advance(WINDOW)
    await settle()
    await submit(batcher, "k", "b")
    clock.advance(2)
    gate.set()  # [a] returns before b's window has passed
    await settle()
    assert shapes(calls) == [["a"]]

    clock.advance(WINDOW - 2)
    await settle()
    assert shapes(calls) == [["a"], ["b"]]
    assert calls[1].reason == FlushReason.WINDOW


async def test_a_batch_behind_a_slow_flight_is_answered_unsent_once_it_has_waited_max_wait(
    make_batcher: MakeBatcher, clock: ManualClock, gate: asyncio.Event
) -> None:
    batcher, calls = make_batcher()
    gate.clear()
    (slow,) = await submit(batcher, "k", "a")
    clock.advance(WINDOW)
    await settle()
    b, b_again = await submit(batcher, "k", "b", "b")  # opened at t=WINDOW
    clock.advance(MAX_WAIT - 0.5)
    await settle()
    assert not b.done()

    clock.advance(0.5)
    await settle()
    # Never a second flight for the key: the waiting batch is answered, not sent.
    assert shapes(calls) == [["a"]]
    for task in (b, b_again):
        error = task.exception()
        assert isinstance(error, Expired) and error.args == (["b"],)
    assert not slow.done()

    (c,) = await submit(batcher, "k", "c")  # later members start a fresh batch
    gate.set()
    await settle()
    assert slow.result() == "k:a"
    clock.advance(WINDOW)
    await settle()
    assert (c.result(), shapes(calls)) == ("k:c", [["a"], ["c"]])


async def test_a_batch_behind_a_flight_that_keeps_hearing_back_never_expires(
    clock: ManualClock,
) -> None:
    # A flight of several calls (a bisection), each answered within batch_timeout, may take
    # longer than max_wait in all: the batch behind it waits, and is sent when it lands.
    calls: list[Closed] = []
    answered = asyncio.Event()

    async def flush(batch: Closed, resolve: Callable[[str, Result], None]) -> None:
        calls.append(batch)
        if len(calls) == 1:
            for _ in range(3):  # three calls, each 0.8 max_wait long
                await answered.wait()
                answered.clear()
                batch.heard()
        for member in batch.members:
            resolve(member, f"{batch.key}:{member}")

    batcher: Batcher[str, str, str, str] = Batcher(
        flush, window=WINDOW, max_size=MAX_SIZE, max_wait=MAX_WAIT, expire=Expired, clock=clock
    )
    (a,) = await submit(batcher, "k", "a")
    clock.advance(WINDOW)
    await settle()
    (b,) = await submit(batcher, "k", "b")
    for _ in range(3):
        clock.advance(0.8 * MAX_WAIT)
        answered.set()
        await settle()
    clock.advance(WINDOW)
    await settle()
    assert (a.result(), b.result()) == ("k:a", "k:b")  # 2.4 max_wait, and no 503
    assert shapes(calls) == [["a"], ["b"]]
    await batcher.aclose()


async def test_a_batch_expires_once_the_flight_it_waits_for_has_been_silent_for_max_wait(
    make_batcher: MakeBatcher, clock: ManualClock, gate: asyncio.Event
) -> None:
    batcher, _ = make_batcher()
    (a,) = await submit(batcher, "k", "a")
    clock.advance(MAX_WAIT - 0.001)  # the window passed long ago: a flew at WINDOW
    await settle()
    assert a.result() == "k:a"
    gate.clear()
    (b,) = await submit(batcher, "k", "b")
    clock.advance(WINDOW)
    await settle()
    (c,) = await submit(batcher, "k", "c")  # behind b's flight, which the gate holds
    clock.advance(MAX_WAIT / 2)
    await settle()
    assert not c.done()  # b's flight is silent, but not yet for max_wait
    clock.advance(MAX_WAIT / 2)
    await settle()
    assert isinstance(c.exception(), Expired)  # now it is: stuck
    gate.set()
    await settle()
    assert b.result() == "k:b"


async def test_a_full_batch_never_flies_while_the_key_has_a_flight(
    make_batcher: MakeBatcher, clock: ManualClock, gate: asyncio.Event
) -> None:
    batcher, calls = make_batcher(max_size=2)
    gate.clear()
    first = await submit(batcher, "k", "a", "b")  # FULL: flies at once
    queued = await submit(batcher, "k", "c", "d", "e", "f", "g")  # [c, d] [e, f] [g] wait
    clock.advance(WINDOW)
    await settle()
    assert shapes(calls) == [["a", "b"]]

    for flights in (2, 3, 4):  # each flight returns before the next takes off
        gate.set()
        await asyncio.sleep(0)
        gate.clear()
        await settle()
        assert len(calls) == flights
    assert shapes(calls) == [["a", "b"], ["c", "d"], ["e", "f"], ["g"]]
    assert reasons(calls)[1:] == [FlushReason.AFTER_FLIGHT] * 3
    gate.set()
    await settle()
    assert [t.result() for t in first + queued] == [f"k:{m}" for m in "abcdefg"]


# Closing


async def test_aclose_flushes_every_open_batch_at_once_and_waits_for_the_flights(
    make_batcher: MakeBatcher, clock: ManualClock, gate: asyncio.Event
) -> None:
    batcher, calls = make_batcher()
    gate.clear()
    tasks = await submit(batcher, "x", "a", "b")
    tasks += await submit(batcher, "y", "c")
    closing = asyncio.create_task(batcher.aclose())
    await settle()

    assert sorted((b.key, b.members) for b in calls) == [("x", ["a", "b"]), ("y", ["c"])]
    assert reasons(calls) == [FlushReason.CLOSE, FlushReason.CLOSE]
    assert clock.now() == 0
    assert not closing.done(), "aclose() must wait for the flights it started"

    gate.set()
    await settle()
    assert closing.done()
    assert [t.result() for t in tasks] == ["x:a", "x:b", "y:c"]


async def test_submit_after_aclose_raises_batcher_closed(echo_batcher: Recorded) -> None:
    batcher, calls = echo_batcher
    await batcher.aclose()

    (late,) = await submit(batcher, "k", "a")
    assert late.done(), "a closed batcher must refuse at once, not wait for a window"
    assert isinstance(late.exception(), BatcherClosed)
    assert calls == []


# Bookkeeping and context


async def test_per_key_state_and_the_pending_count_return_to_zero_once_everything_settles(
    make_batcher: MakeBatcher, clock: ManualClock, gate: asyncio.Event
) -> None:
    async def respond(batch: Closed) -> Mapping[str, Result]:
        if batch.key == "broken":
            raise RuntimeError("boom")
        return await echo(batch)

    batcher, _ = make_batcher(respond)
    gate.clear()
    await submit(batcher, "x", "a", "a")
    await submit(batcher, "broken", "b")
    clock.advance(WINDOW)
    await settle()
    await submit(batcher, "x", "c")  # waits behind x's flight
    assert (batcher.keys, batcher.pending) == (2, 4)

    gate.set()
    clock.advance(WINDOW)
    await settle()
    assert (batcher.keys, batcher.pending) == (0, 0)


REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")


async def test_the_flush_runs_in_a_fresh_context_without_the_submitters_variables(
    make_batcher: MakeBatcher, clock: ManualClock
) -> None:
    seen: list[str | None] = []

    async def respond(batch: Closed) -> Mapping[str, Result]:
        seen.append(REQUEST_ID.get(None))
        return await echo(batch)

    batcher, _ = make_batcher(respond, max_size=2)
    token = REQUEST_ID.set("req-1")
    try:
        await submit(batcher, "k", "a", "b")  # FULL: closed inside the submitter
        await submit(batcher, "k", "c")
        clock.advance(WINDOW)  # WINDOW: closed by a timer set in the submitter's context
        await settle()
    finally:
        REQUEST_ID.reset(token)

    assert seen == [None, None]


async def test_aclose_never_starts_a_second_flight_for_a_key(
    make_batcher: MakeBatcher, clock: ManualClock, gate: asyncio.Event
) -> None:
    flying: list[int] = []
    peak: list[int] = [0]

    async def respond(batch: Closed) -> Mapping[str, Result]:
        flying.append(1)
        peak[0] = max(peak[0], len(flying))
        await asyncio.sleep(0)
        flying.pop()
        return await echo(batch)

    batcher, calls = make_batcher(respond)
    gate.clear()
    (first,) = await submit(batcher, "k", "a")
    clock.advance(WINDOW)
    await settle()  # [a] is in flight, held by the gate
    (second,) = await submit(batcher, "k", "b")
    closing = asyncio.ensure_future(batcher.aclose())
    await settle()
    assert shapes(calls) == [["a"]]  # [b] waits for [a]'s flight, shutdown or not
    gate.set()
    await asyncio.wait_for(closing, 5)
    assert (await first, await second) == ("k:a", "k:b")
    assert reasons(calls) == [FlushReason.WINDOW, FlushReason.CLOSE]
    assert peak[0] == 1


async def test_at_the_deadline_every_waiter_gets_the_abandon_error_even_behind_a_flight(
    make_batcher: MakeBatcher, clock: ManualClock, gate: asyncio.Event
) -> None:
    batcher, calls = make_batcher()
    gate.clear()  # the upstream is stuck
    in_air = await submit(batcher, "k", "a", "a")
    clock.advance(WINDOW)
    await settle()
    queued = await submit(batcher, "k", "b")  # behind the flight that never returns
    other = await submit(batcher, "other", "c")  # its own key: flies at once on close
    gone = RuntimeError("shut down")
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(batcher.aclose(loop.time() + 0.05, gone), 5)

    assert sorted(shapes(calls)) == [["a"], ["c"]]  # [b] is never sent
    for task in in_air + queued + other:
        assert task.exception() is gone
    assert (batcher.keys, batcher.pending) == (2, 0)  # only the flights still in the air
    gate.set()
    await settle()
    assert (batcher.keys, len(calls)) == (0, 2)


async def test_the_flush_gets_the_context_of_the_member_that_opened_the_batch(
    echo_batcher: Recorded, clock: ManualClock
) -> None:
    batcher, calls = echo_batcher
    await submit(batcher, "k", "a", "b")
    clock.advance(WINDOW)
    await settle()
    assert [(b.members, b.context) for b in calls] == [(["a", "b"], "ctx-a")]


async def test_each_member_is_answered_the_moment_the_flush_resolves_it(
    clock: ManualClock,
) -> None:
    release = asyncio.Event()

    async def flush(batch: Closed, resolve: Callable[[str, Result], None]) -> None:
        resolve("fast", "early")
        await release.wait()
        resolve("slow", "late")

    batcher: Batcher[str, str, str, str] = Batcher(
        flush, window=0, max_size=10, max_wait=1, expire=Expired, clock=clock
    )
    fast = asyncio.create_task(batcher.submit("k", "fast", str))
    slow = asyncio.create_task(batcher.submit("k", "slow", str))
    await settle()
    clock.advance(0)
    await settle()
    assert (fast.done(), slow.done()) == (True, False)
    assert fast.result() == "early"
    release.set()
    await settle()
    assert slow.result() == "late"
    await batcher.aclose()
