"""Time as the batcher sees it: injectable, so tests drive windows by hand."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Iterator
from typing import Final, Generic, Protocol, TypeVar

TIMER_SLACK: Final = 1e-4  # a loop's timer may fire this much early (its clock's resolution)


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


H = TypeVar("H", bound=Hashable)


class Recent(Generic[H]):
    """When each key was last seen, for `span` seconds: oldest first, so forgetting is a walk
    from the front and memory follows live keys only (burst memory, landings, connections)."""

    def __init__(self, span: float) -> None:
        self.span = span
        self._at: dict[H, float] = {}

    def note(self, key: H, now: float) -> None:
        self._at.pop(key, None)
        self._at[key] = now
        self.forget(now)

    def at(self, key: H, now: float) -> float | None:
        """When `key` was last seen, if within `span` of `now`."""
        seen = self._at.get(key)
        return seen if seen is not None and seen > now - self.span else None

    def forget(self, now: float) -> None:
        while self._at:
            oldest, seen = next(iter(self._at.items()))
            if seen > now - self.span:
                return
            del self._at[oldest]
            self.forgot(oldest)

    def forgot(self, key: H) -> None:
        """`key` was not seen for `span`: what is kept of it may go."""

    def __iter__(self) -> Iterator[H]:
        return iter(self._at)


class Tally(Recent[H]):
    """A count per key, kept while the key was seen within `span` (`add` sees it; `take` does
    not)."""

    def __init__(self, span: float) -> None:
        super().__init__(span)
        self._count: dict[H, int] = {}

    def add(self, key: H, now: float, n: int) -> None:
        self._count[key] = self.count(key, now) + n
        self.note(key, now)

    def take(self, key: H, now: float) -> None:
        """One less, down to none."""
        if (count := self.count(key, now)) > 0:
            self._count[key] = count - 1

    def count(self, key: H, now: float) -> int:
        return self._count.get(key, 0) if self.at(key, now) is not None else 0

    def forgot(self, key: H) -> None:
        self._count.pop(key, None)
