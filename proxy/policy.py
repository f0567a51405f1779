"""When a batch may leave, and why it left: the flush policy (docs/design.md, Flush policy)."""

from __future__ import annotations

import enum
from collections.abc import Hashable
from typing import Final, Generic, TypeVar

K = TypeVar("K", bound=Hashable)

BURST_MEMORY: Final = 1.0  # seconds a key counts as bursty after it had company (adaptive)


class Policy(enum.StrEnum):
    WINDOW = "window"  # `window` after the batch's first member
    IDLE = "idle"  # at once on an idle key; members gather only during a flight
    # Like idle, but while the key had company lately: a window from the first member, and one
    # more after each flight returns, for the follow-ups of the callers it answered.
    ADAPTIVE = "adaptive"


class FlushReason(enum.StrEnum):
    IDLE = "idle"  # sent at once: the key had no flight and no waiting batch
    WINDOW = "window"  # its window passed with nothing in flight
    FULL = "full"  # max_size members, nothing in flight
    AFTER_FLIGHT = "after_flight"  # it was due during a flight, which has now returned
    MAX_WAIT = "max_wait"  # never sent: max_wait passed behind a flight (see `expire`)
    CLOSE = "close"  # aclose()


class FlushPolicy(Generic[K]):
    """Decides whether a new batch waits for its window or may leave at once.

    Either way it leaves only when its key has no flight. "Company" is a member arriving while
    its key has a flight or a waiting batch: a burst, which a window lets gather.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        # Keys that had company within BURST_MEMORY, oldest first (re-inserted when seen again),
        # so forgetting is a walk from the front: memory follows live bursts only.
        self._company: dict[K, float] = {}

    def had_company(self, key: K, now: float) -> None:
        if self.policy == Policy.ADAPTIVE:
            self._company.pop(key, None)
            self._company[key] = now

    def lingers(self, key: K, now: float) -> bool:
        """Whether a batch waiting behind a flight that just returned waits one more window
        (adaptive, on a key with company lately) instead of leaving at once."""
        return self.policy == Policy.ADAPTIVE and self.waits_window(key, now)

    def waits_window(self, key: K, now: float) -> bool:
        if self.policy != Policy.ADAPTIVE:
            return self.policy == Policy.WINDOW
        while self._company:
            oldest, at = next(iter(self._company.items()))
            if at >= now - BURST_MEMORY:
                break
            del self._company[oldest]
        return key in self._company
