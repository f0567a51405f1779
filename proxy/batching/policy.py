"""When a batch may leave, and why it left: the flush policy (docs/design.md, Flush policy)."""

from __future__ import annotations

import enum
from collections.abc import Hashable
from typing import Final, Generic, TypeVar

from .clock import Recent, Tally

K = TypeVar("K", bound=Hashable)

BURST_MEMORY: Final = 1.0  # seconds a key counts as bursty after it had company
CALL_TIME_WEIGHT: Final = 0.3  # weight of the newest flight in the call-time average
# `quiet`, a browser's first wave: an HTTP/1.1 browser has at most BROWSER_WAVE requests in
# flight to a host. While its burst's leader is in the air and the burst is smaller than that,
# a batch waits for a pause in arrivals twice as long as the burst has been arriving (at least
# WAVE_PAUSE_WINDOWS and at most WAVE_GAP_WINDOWS windows more than the quiet gap), for as long
# as the leader is in the air (FlushPolicy.wave).
BROWSER_WAVE: Final = 6
WAVE_PAUSE_WINDOWS: Final = 2
WAVE_GAP_WINDOWS: Final = 3


class Policy(enum.StrEnum):
    # A batch gathers while its arrivals keep coming, then flies beside the flights in the air
    # that share none of its names; see FlushPolicy.
    QUIET = "quiet"
    WINDOW = "window"  # `window` after the batch's first member; one flight per key
    IDLE = "idle"  # at once on an idle key; members gather only during a flight
    # Like idle, but while the key had company lately: a window from the first member, and one
    # more after each flight returns, for the follow-ups of the callers it answered.
    ADAPTIVE = "adaptive"


class FlushReason(enum.StrEnum):
    IDLE = "idle"  # sent at once: the key had no flight and no waiting batch
    QUIET = "quiet"  # its arrivals went quiet (and the flight it waited for, if any, landed)
    WINDOW = "window"  # its window passed (with nothing in flight, except under `quiet`)
    FULL = "full"  # max_size members, nothing in flight
    AFTER_FLIGHT = "after_flight"  # it was due during a flight, which has now returned
    MAX_WAIT = "max_wait"  # never sent: max_wait passed behind a flight (see `expire`)
    CLOSE = "close"  # aclose()


class FlushPolicy(Generic[K]):
    """Decides whether a new batch waits, and how long, and whether it may fly beside others.

    "Company" is a member arriving while its key has a flight or a waiting batch: a burst. Under
    `window`, `idle` and `adaptive` a key has one flight at a time. Under `quiet` (the default):

    - a request on an idle key that had no company lately leads it: it goes at once, as it came;
    - any other request joins the key's waiting batch, which leaves once no member has arrived
      for the quiet gap (`quiet`, 5 ms), or when its window from the first member is over;
    - a batch flies beside the key's flights that share none of its names (one flight per
      name): a burst never waits for a flight of its own start, such as its leader;
    - while its burst's leader is in the air, a batch that may be a browser's first wave still
      coming over fresh connections waits for a longer pause (`wave`: two or three windows);
    - except a batch opened by a follow-up (a request on a connection answered a moment ago:
      state.FollowUps) after a flight of the key landed: it waits for the flights that were in
      the air with that one (each until it has flown twice as long as the key's last call or
      their moving average, at most), then for the first follow-up of their callers (two
      windows or half a call, whichever is longer, at most), then as long as its clients take
      to send one; or only a quiet gap once its round is in: as many requests as the callers
      answered lately whose follow-ups had not come, and the callers of the key's flights
      (`answered`). A browser sends a queued request on a connection the moment its answer is
      in, and so do the callers of the rest of its burst when their flights land: so the next
      round is one call. The wait costs the round nothing, since it ends with the burst's last
      flight anyway.
    """

    def __init__(self, policy: Policy, *, window: float = 0.0, quiet: float = 0.0) -> None:
        self.policy = policy
        self.window = window
        self.quiet_gap = min(quiet, window)  # `quiet`: the pause in arrivals that ends a batch
        self._company = Recent[K](BURST_MEMORY)  # keys that had company lately
        # `quiet`: each key's last landing, and the callers its landings answered whose
        # follow-ups have not come
        self._landed = Tally[K](BURST_MEMORY)
        self._call_time: dict[Hashable, float] = {}  # per family: a moving average of flights

    @property
    def beside(self) -> bool:
        """Whether a batch may fly while its key has flights (sharing none of its names)."""
        return self.policy == Policy.QUIET

    def had_company(self, key: K, now: float) -> None:
        if self.policy in (Policy.ADAPTIVE, Policy.QUIET):
            self._company.note(key, now)

    def may_lead(self, key: K, now: float) -> bool:
        """Whether a request on idle `key` may go at once, as it came."""
        if self.policy == Policy.WINDOW:
            return False
        return self.policy == Policy.IDLE or not self._bursty(key, now)

    def lingers(self, key: K, now: float) -> bool:
        """Whether a batch waiting behind a flight that just returned waits one more window
        (adaptive, on a key with company lately) instead of leaving at once."""
        return self.policy == Policy.ADAPTIVE and self._bursty(key, now)

    def waits_window(self, key: K, now: float) -> bool:
        """Whether a new batch on an idle key waits (its window, or under `quiet` its gap)."""
        if self.policy in (Policy.ADAPTIVE, Policy.QUIET):
            return self._bursty(key, now)
        return self.policy == Policy.WINDOW

    def expected_call(self, family: Hashable) -> float | None:
        return self._call_time.get(family)

    def flown(self, family: Hashable, seconds: float) -> None:
        """A flight of `family` took `seconds`: the moving average learns it."""
        old = self._call_time.get(family)
        self._call_time[family] = (
            seconds if old is None else old + CALL_TIME_WEIGHT * (seconds - old)
        )

    @staticmethod
    def wave_whole(company: int) -> bool:
        """Whether a burst with `company` besides its leader just became a browser's whole
        first wave."""
        return company + 1 == BROWSER_WAVE

    def wave(self, led: float, last_at: float, company: int) -> float | None:
        """`quiet`: the quiet gap of a batch beside its burst's leader (led at `led`, still in
        the air; `company` requests since in batches beside it) if the burst may be a browser's
        first wave still arriving, or None. A browser sends its first wave on fresh
        connections, which a busy machine sets up over tens of milliseconds (dstack 0.18.40's
        legacy UI, in Chromium: 35-70 ms, up to 104 ms for a delete; three at once, then three
        21 ms later), so the wave waits for a pause twice as long as it has been arriving, two
        windows at least and three at most; a burst of more requests (leader included) than a
        browser sends at once does not, and one that ends while its leader is in the air pays
        that pause (docs/design.md, Flush policy). Once the leader lands (dstack 0.22.5: in 7 ms
        or so), nobody waits; and since every request of the wave adds to its company, it
        gathers for five such pauses at most."""
        if company + 1 >= BROWSER_WAVE:  # a whole wave, or more than a browser sends at once
            return None
        pause = 2 * (last_at - led)
        window = self.window
        return self.quiet_gap + min(
            max(pause, WAVE_PAUSE_WINDOWS * window), WAVE_GAP_WINDOWS * window
        )

    def landed(self, key: K, now: float, callers: int = 1) -> None:
        """A flight of `key` landed, answering `callers` (`quiet` remembers it for
        BURST_MEMORY)."""
        if self.policy == Policy.QUIET:
            self._landed.add(key, now, callers)

    def followed_up(self, key: K, now: float) -> None:
        """A caller of `key` sent its next request on the connection of its answer."""
        if self.policy == Policy.QUIET:
            self._landed.take(key, now)

    def answered(self, key: K, now: float) -> int:
        """`quiet`: how many callers the landings of `key` answered lately whose follow-ups
        have not come (some never do: a client done, or sending another kind of request)."""
        return self._landed.count(key, now)

    def landed_at(self, key: K, now: float) -> float | None:
        """When a flight of `key` last landed, if within BURST_MEMORY."""
        return self._landed.at(key, now)

    def _bursty(self, key: K, now: float) -> bool:
        return self._company.at(key, now) is not None
