"""One batch's calls (a `Flight`), through a `send` seam, and each caller's own answer.

On success every caller shares the reply. Any other outcome is shared only when it is shown not
to depend on the names (docs/dstack-api.md, Refusals of the batchable endpoints):

- a status that on this endpoint only the key's own checks give (`key_wide_statuses`: no
  token, no such project), or a timeout or a connection failure (never resent);
- an outcome that the probe confirms: the same request naming nothing (an empty list, a no-op
  on dstack; `probe` in the endpoint table), sent once per flight on its first failure that
  needs it. A refusal the probe gets byte for byte (a bad API version, an unknown token, a role
  too low) is about the key; a 5xx the probe also gets is a failure of the server itself.

Anything else is bisected: the callers are split in halves and each half resent, until every
failing request stands alone and gets the upstream's answer to exactly its own request. That
covers refusals that name nothing (dstack's bare 403 for one SSH fleet, its lock and
provisioning messages) and a 5xx only some names cause. A failed call leaves nothing that a
resend would change on any enabled endpoint (docs/dstack-api.md, Failure semantics).

Each caller is answered the moment its own answer is known.

Resending is bounded: N callers never cost more than G + N + 2·ceil(log2 N) + 1 calls, where
G is 1 plus the calls `max_names` forces and the last 1 is the probe. All succeed: 1 call; a
refusal or 5xx about the key: 2 (the call and the probe); one bad caller: about 2 + 2·log2 N.
At most MAX_CONCURRENT_CALLS calls of one batch run at once.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from ..errors import UpstreamError, classify
from ..ops.logs import PROCESS_ID
from .batches import (
    BatchTarget,
    Member,
    Outcome,
    UpstreamReply,
    chunks,
    rounds_of,
)
from .endpoints import SharedFields

MAX_CONCURRENT_CALLS: Final = 4  # per batch, while splitting: gentle on SQLite's one writer

Send = Callable[[BatchTarget, Sequence[str | int], SharedFields, str], Awaitable[Outcome]]
"""One upstream call: target, the names it carries, the shared body fields, and a call id."""
Resolve = Callable[[Member, UpstreamReply | BaseException], None]
_BATCH_SERIALS: Final = itertools.count(1)


def new_batch_id() -> str:
    """Unique across processes and restarts, like request ids, and as cheap."""
    return f"{PROCESS_ID}b{next(_BATCH_SERIALS):07x}"


class Flight:
    """The calls of one batch: the bisection policy and its budget, free of metrics and logs."""

    def __init__(
        self,
        send: Send,
        target: BatchTarget,
        shared: SharedFields,
        resolve: Resolve,
        *,
        max_names: int | None = None,
        call_id: str = "",
    ) -> None:
        self._send, self._target, self._shared, self._resolve = send, target, shared, resolve
        self._max_names = max_names
        self._call_id = call_id or new_batch_id()
        self._gate = asyncio.Semaphore(MAX_CONCURRENT_CALLS)
        self._budget = 0  # calls still allowed; kept >= _open, so every caller can be answered
        self._open = 0  # callers whose answer no call under way is sure to give
        # The probe's outcome, once sent: set in sync code only, so one flight sends one probe.
        self._probe: asyncio.Future[Outcome] | None = None
        self.calls: Counter[str] = Counter()  # by purpose: batch (planned), split or probe
        self.splits = 0  # failing calls split in halves
        self.first: Outcome | None = None  # the first call's outcome

    async def run(self, members: Sequence[Member]) -> None:
        """Answer every member through `resolve`, in ordered rounds where repeats fail."""
        rounds = [list(members)] if self._target.spec.idempotent else rounds_of(members)
        groups = [chunks(r, self._max_names) for r in rounds]
        n = len(members)
        extra = sum(map(len, groups)) - len(groups)  # calls that max_names forces
        self._budget = 1 + n + 2 * math.ceil(math.log2(max(n, 1))) + extra + 1  # + the probe
        self._open = n
        try:
            for planned in groups:  # a later round only after every answer of the earlier one
                if len(planned) == 1:  # the common case, without a task per group
                    await self._group(planned[0])
                else:
                    await asyncio.gather(*(self._group(g) for g in planned))
        finally:
            if self._probe is not None and not self._probe.done():
                self._probe.cancel()  # only if the flight itself was cancelled

    async def _group(self, members: Sequence[Member]) -> None:
        if len(members) > 1 and self._budget - 1 < self._open:
            await self._one_by_one(members)  # later rounds when failures were dense
            return
        self._budget -= 1
        await self._settle(members, await self._call(_names_of(members), "batch"))

    async def _settle(self, members: Sequence[Member], outcome: Outcome) -> None:
        """Give `members`, who were just called together with `outcome`, their own answers."""
        if len(members) == 1 or await self._is_shared(outcome):
            self._answer(members, outcome)
        elif self._budget - 2 >= self._open:  # can split and still finish singly
            self._budget -= 2
            await self._split(members)
        else:  # failures are dense: asking each caller once is cheaper than splitting on
            await self._one_by_one(members)

    async def _split(self, members: Sequence[Member]) -> None:
        self.splits += 1
        halves = (members[: len(members) // 2], members[len(members) // 2 :])

        async def half(part: Sequence[Member]) -> None:
            await self._settle(part, await self._call(_names_of(part), "split"))

        await asyncio.gather(half(halves[0]), half(halves[1]))

    async def _one_by_one(self, members: Sequence[Member]) -> None:
        self._budget -= len(members)
        self._open -= len(members)  # each single call is sure to answer its caller

        async def one(member: Member) -> None:
            self._resolve(member, await self._call(member.names, "split"))

        await asyncio.gather(*(one(m) for m in members))

    async def _call(self, names: Sequence[str | int], purpose: str) -> Outcome:
        call_id = f"{self._call_id}-{sum(self.calls.values())}"
        self.calls[purpose] += 1
        async with self._gate:
            try:
                outcome = await self._send(self._target, names, self._shared, call_id)
            except Exception as exc:  # a broken send must not leave a caller waiting
                outcome = classify(exc)
        if self.first is None and purpose != "probe":
            self.first = outcome
        return outcome

    def _answer(self, members: Sequence[Member], outcome: Outcome) -> None:
        self._open -= len(members)
        for member in members:
            self._resolve(member, outcome)

    async def _is_shared(self, outcome: Outcome) -> bool:
        """Whether every caller in the call earns this outcome: success, a status only the key
        can cause, a timeout or connection failure (never resent), or what the probe confirms."""
        if isinstance(outcome, UpstreamError):
            return True
        if outcome.ok or outcome.status in self._target.spec.key_wide_statuses:
            return True
        probe = await self._probed()
        return probe is not None and _confirms(probe, outcome)

    async def _probed(self) -> Outcome | None:
        """The probe's outcome: the call naming nothing, sent once, on the first failure that
        needs it; None where the endpoint has no no-op probe or the budget has no room left."""
        if self._probe is None:
            if not self._target.spec.probe or self._budget - 1 < self._open:
                return None
            self._budget -= 1
            self._probe = asyncio.ensure_future(self._call((), "probe"))
        return await asyncio.shield(self._probe)


def _names_of(members: Sequence[Member]) -> Sequence[str | int]:
    """The names of one call: one caller's request as it was; a batch's list without repeats."""
    if len(members) == 1:
        return members[0].names
    return list(dict.fromkeys(name for m in members for name in m.names))


def _confirms(probe: Outcome, outcome: UpstreamReply) -> bool:
    """Whether the probe, which names nothing, shows that `outcome` does not depend on the names:
    the same refusal byte for byte, or, for a 5xx, a failure of its own (the server's)."""
    if outcome.status >= 500:
        return isinstance(probe, UpstreamError) or probe.status >= 500
    return isinstance(probe, UpstreamReply) and (probe.status, probe.body) == (
        outcome.status,
        outcome.body,
    )
