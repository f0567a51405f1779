"""The pass-through slot count: free slots are taken at once, a freed slot goes to the longest
waiter, a wait is bounded, and no slot is ever lost or made up."""

from __future__ import annotations

import asyncio

from proxy.edge.slots import Slots


async def test_free_slots_are_taken_at_once_and_the_next_waits_for_its_timeout() -> None:
    slots = Slots(2)
    assert await slots.take(0.01)
    assert await slots.take(0.01)
    assert not await slots.take(0.05)  # none free, none given back: the wait ends, refused


async def test_a_slot_given_back_goes_to_the_longest_waiter_first() -> None:
    slots = Slots(1)
    assert await slots.take(0.01)
    first = asyncio.ensure_future(slots.take(5))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(slots.take(5))
    await asyncio.sleep(0)
    slots.give()
    assert await asyncio.wait_for(first, 1)
    assert not second.done()
    slots.give()
    assert await asyncio.wait_for(second, 1)


async def test_a_waiter_cancelled_after_its_slot_was_handed_over_gives_it_back() -> None:
    slots = Slots(1)
    assert await slots.take(0.01)
    waiter = asyncio.ensure_future(slots.take(5))
    await asyncio.sleep(0)
    slots.give()  # handed to the waiter, which has not run yet
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert await slots.take(0.01)  # the slot came back rather than being lost
    assert not await slots.take(0.01)  # and only that one


async def test_a_waiter_that_gave_up_is_skipped_by_the_next_give() -> None:
    slots = Slots(1)
    assert await slots.take(0.01)
    assert not await slots.take(0.01)
    slots.give()  # nobody waits now: the slot is free again, not handed to the one who left
    assert await slots.take(0.01)


async def test_unbounded_slots_never_make_anyone_wait() -> None:
    """The pool of requests sent alone on a batchable path (app.py): one flight per key bounds
    them already, so the slots only count nothing."""
    slots = Slots(None)
    assert all([slots.take_now() for _ in range(1000)])
    assert await slots.take(0)
    slots.give()
    assert slots.take_now()


def test_bounded_slots_taken_without_waiting_run_out() -> None:
    slots = Slots(2)
    assert [slots.take_now() for _ in range(3)] == [True, True, False]
    slots.give()
    assert slots.take_now()
