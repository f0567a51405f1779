"""The batcher's bookkeeping: a batch waiting to leave, each key's queue of them, and what a
flush is given (`ClosedBatch`) and gives back (`Resolve`)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .clock import Clock, Timer
from .policy import FlushReason

K = TypeVar("K", bound=Hashable)
T = TypeVar("T", bound=Hashable)
R = TypeVar("R")
C = TypeVar("C")


def its_own_name(member: Hashable) -> tuple[Hashable]:
    """By default (`quiet`), a member names itself: flights of one key share no member."""
    return (member,)


def no_names(member: Hashable) -> tuple[()]:
    """One flight per key (every policy but `quiet`): names are not kept."""
    return ()


def one_family(key: Hashable) -> None:
    """By default, every key's calls take alike long."""
    return None


@dataclass(frozen=True, slots=True)
class ClosedBatch(Generic[K, T, C]):
    """What `flush` is given: the key, the context of the submitter that opened the batch, and
    the distinct members in arrival order."""

    key: K
    context: C
    members: list[T]
    waiters: int
    reason: FlushReason
    opened_at: float
    last_at: float
    closed_at: float
    heard: Callable[[], None] = field(default=lambda: None, compare=False)
    """For `flush` to say that the upstream answered one of its calls: a flight that keeps
    hearing back is not stuck (`max_wait`)."""


Resolve = Callable[[T, R | BaseException], None]
# Type parameters in order of appearance: FlushFn[K, T, C, R].
FlushFn = Callable[[ClosedBatch[K, T, C], Resolve[T, R]], Awaitable[None]]
ExpireFn = Callable[[ClosedBatch[K, T, C]], BaseException]


Waiters = dict[T, list[asyncio.Future[R | BaseException]]]
"""Distinct members in arrival order, each with the futures of the submitters waiting for it: one
future per submitter, so cancelling one never cancels another's (no `asyncio.shield`, which
costs each held request an extra future and two callbacks)."""


@dataclass(eq=False, slots=True)
class InAir:
    """One flight of a key: a batch's call, or a caller's own (`lead`)."""

    names: frozenset[Hashable]
    started: float
    led: bool = False  # a caller's own call on an idle key: the start of a burst, if any
    callers: int = 1  # the submitters it answers
    company: int = 0  # if led: the requests of its burst since, in batches beside it
    heard: float = 0.0  # when the upstream last answered one of its calls (or it started)

    def __post_init__(self) -> None:
        self.heard = self.started

    def hear(self, now: float) -> None:
        """One of its calls was answered: it is not stuck."""
        self.heard = now

    def hear_at(self, clock: Clock) -> None:
        self.hear(clock.now())


@dataclass(eq=False, slots=True)
class WaitingBatch(Generic[K, T, R, C]):
    key: K
    context: C
    opened_at: float
    last_at: float
    futures: Waiters[T, R] = field(default_factory=dict)
    waiters: int = 0
    due: FlushReason | None = None  # set once it may leave; it leaves when no flight stops it
    timers: list[Timer] = field(default_factory=list)  # cancelled when it leaves
    window: Timer | None = None  # the running window, restarted when it lingers
    names: set[Hashable] = field(default_factory=set)  # its members' names (`quiet` only)
    holding: list[InAir] = field(default_factory=list)  # flights it waits to see land
    quiet_from: float = 0.0  # when the last of those landed, or the first follow-up after it
    # `quiet`: how long after they landed it waits for the first of their callers' follow-ups
    await_first: float = 0.0
    deadline: float = 0.0  # `quiet`: it leaves by then, gathered or not
    leader: InAir | None = None  # `quiet`: its burst's leader, while that is in the air
    linger: float = 0.0  # `quiet`: how long after the landing it waited for it still waits
    # `quiet`, a follow-up's batch: the callers answered lately whose follow-ups had not come,
    # and those of the key's flights; once that many have joined, the round is in (0: unknown)
    expect: int = 0

    def add(
        self, member: T, now: float, names: Iterable[Hashable] = ()
    ) -> asyncio.Future[R | BaseException]:
        """A future of its own for a new submitter of `member` (equal members share a slot)."""
        future: asyncio.Future[R | BaseException] = asyncio.get_running_loop().create_future()
        if (waiting := self.futures.get(member)) is None:
            self.futures[member] = [future]
            self.names.update(names)
        else:
            waiting.append(future)
        self.waiters += 1
        self.last_at = now
        return future

    def closed(
        self, reason: FlushReason, now: float, heard: Callable[[], None] = lambda: None
    ) -> ClosedBatch[K, T, C]:
        at = (self.opened_at, self.last_at, now)
        members = list(self.futures)
        return ClosedBatch(self.key, self.context, members, self.waiters, reason, *at, heard)


@dataclass(eq=False, slots=True)
class KeyQueue(Generic[K, T, R, C]):
    waiting: deque[WaitingBatch[K, T, R, C]] = field(default_factory=deque)  # arrival order
    flights: list[InAir] = field(default_factory=list)  # in the air, oldest first
    last_call: float = 0.0  # how long its last flight to land took

    def clashes(self, names: set[Hashable] | frozenset[Hashable]) -> bool:
        """Whether a flight in the air carries one of `names`."""
        return any(not names.isdisjoint(flight.names) for flight in self.flights)


def drop(batch: WaitingBatch[K, T, R, C], error: BaseException) -> None:
    for timer in batch.timers:
        timer.cancel()
    settle(batch.futures, error)


def settle(futures: Waiters[T, R], error: BaseException) -> None:
    for waiting in futures.values():
        deliver(waiting, error)


def deliver(waiting: list[asyncio.Future[R | BaseException]], result: R | BaseException) -> None:
    """Give `result` to every submitter still waiting (a cancelled one is done already)."""
    for future in waiting:
        if not future.done():
            future.set_result(result)


async def fly(
    flush: FlushFn[K, T, C, R],
    closed: ClosedBatch[K, T, C],
    futures: Waiters[T, R],
    hear: Callable[[], None],
    landed: Callable[[], None],
) -> None:
    """One flight: `flush(closed)`. Each submitter gets its member's result the moment `flush`
    resolves it (the flight hears back), or the error `flush` raised, or a LookupError if
    `flush` gave its member none: nobody hangs. Then `landed()`."""

    def resolve(member: T, result: R | BaseException) -> None:
        hear()
        if (waiting := futures.get(member)) is not None:
            deliver(waiting, result)

    try:
        await flush(closed, resolve)
    except BaseException as exc:  # every waiter learns of it
        settle(futures, exc)
        if not isinstance(exc, Exception):
            raise
    finally:
        for member, waiting in futures.items():
            deliver(waiting, LookupError(f"flush gave no result for {member!r}"))
        landed()
