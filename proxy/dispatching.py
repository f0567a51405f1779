"""Sending a batch upstream through a `send` seam and working out each caller's own answer.

On success every caller shares the reply. A failure that depends only on the key (bad token, no
such project, an upstream 5xx or timeout) is shared without resending. Any other failure is
bisected: the callers are split in halves and each half resent, until every failing request
stands alone and gets the upstream's answer to exactly its own request. dstack's list endpoints
change nothing when they fail (docs/dstack-api.md, Failure semantics), so resending is safe.

Each caller is answered the moment its own answer is known. When both halves of a failing call
get the same refusal (status and body), naming none of the names they share, the refusal is
about the key, not the names (a refusal about a name names it), and every caller in the call
gets it: an incompatible X-API-Version, say.

Resending is bounded: N callers never cost more than G + N + 2·ceil(log2 N) calls, where G is
1 plus the calls `max_names` forces; one bad caller costs about 1 + 2·log2 N; a refusal the same
for everyone costs 3. At most MAX_CONCURRENT_CALLS calls of one batch run at once.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import structlog

from .batcher import ClosedBatch
from .batches import (
    BatchKey,
    BatchTarget,
    Member,
    Outcome,
    SharedFields,
    UpstreamReply,
    chunks,
    rounds_of,
)
from .errors import UpstreamBusy, UpstreamError, classify
from .logs import PROCESS_ID
from .metrics import Metrics

log = structlog.get_logger(__name__)

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
        self.calls: Counter[str] = Counter()  # by purpose: batch (a planned call) or split
        self.splits = 0  # failing calls split in halves
        self.first: Outcome | None = None  # the first call's outcome

    async def run(self, members: Sequence[Member]) -> None:
        """Answer every member through `resolve`, in ordered rounds where repeats fail."""
        rounds = [list(members)] if self._target.spec.idempotent else rounds_of(members)
        groups = [chunks(r, self._max_names) for r in rounds]
        n = len(members)
        extra = sum(map(len, groups)) - len(groups)  # calls that max_names forces
        self._budget = 1 + n + 2 * math.ceil(math.log2(max(n, 1))) + extra
        self._open = n
        for planned in groups:  # a later round only after every answer of the earlier one
            if len(planned) == 1:  # the common case, without a task per group
                await self._group(planned[0])
            else:
                await asyncio.gather(*(self._group(g) for g in planned))

    async def _group(self, members: Sequence[Member]) -> None:
        if len(members) > 1 and self._budget - 1 < self._open:
            await self._one_by_one(members)  # later rounds when failures were dense
            return
        self._budget -= 1
        await self._settle(members, await self._call(members, "batch"))

    async def _settle(self, members: Sequence[Member], outcome: Outcome) -> None:
        """Give `members`, who were just called together with `outcome`, their own answers."""
        if len(members) == 1 or self._is_shared(outcome):
            self._answer(members, outcome)
        elif self._budget - 2 >= self._open:  # can split and still finish singly
            self._budget -= 2
            await self._split(members)
        else:  # failures are dense: asking each caller once is cheaper than splitting on
            await self._one_by_one(members)

    async def _split(self, members: Sequence[Member]) -> None:
        self.splits += 1
        halves = (members[: len(members) // 2], members[len(members) // 2 :])
        loop = asyncio.get_running_loop()
        heard: tuple[asyncio.Future[Outcome], ...] = (loop.create_future(), loop.create_future())

        async def half(i: int) -> None:
            outcome = await self._call(halves[i], "split")
            heard[i].set_result(outcome)
            if len(halves[i]) == 1 or self._is_shared(outcome):
                self._answer(halves[i], outcome)  # at once, not after the other branch
            elif _same_refusal(outcome, await heard[1 - i], *halves):
                self._answer(halves[i], outcome)
            else:
                await self._settle(halves[i], outcome)

        await asyncio.gather(half(0), half(1))

    async def _one_by_one(self, members: Sequence[Member]) -> None:
        self._budget -= len(members)
        self._open -= len(members)  # each single call is sure to answer its caller

        async def one(member: Member) -> None:
            self._resolve(member, await self._call((member,), "split"))

        await asyncio.gather(*(one(m) for m in members))

    async def _call(self, members: Sequence[Member], purpose: str) -> Outcome:
        # One caller's request is sent as it was; a batch's list drops repeated names.
        names: Sequence[str | int] = (
            members[0].names
            if len(members) == 1
            else list(dict.fromkeys(name for m in members for name in m.names))
        )
        call_id = f"{self._call_id}-{sum(self.calls.values())}"
        self.calls[purpose] += 1
        async with self._gate:
            try:
                outcome = await self._send(self._target, names, self._shared, call_id)
            except Exception as exc:  # a broken send must not leave a caller waiting
                outcome = classify(exc)
        if self.first is None:
            self.first = outcome
        return outcome

    def _answer(self, members: Sequence[Member], outcome: Outcome) -> None:
        self._open -= len(members)
        for member in members:
            self._resolve(member, outcome)

    def _is_shared(self, outcome: Outcome) -> bool:
        """Whether every caller in the call earns this outcome: success, a key-wide refusal, or
        a failure of the upstream itself (5xx, timeout), never resent (no amplification)."""
        if isinstance(outcome, UpstreamError):
            return True
        spec = self._target.spec
        return outcome.ok or outcome.status in spec.key_wide_statuses or outcome.status >= 500


def _same_refusal(a: Outcome, b: Outcome, left: Sequence[Member], right: Sequence[Member]) -> bool:
    """Whether two halves got one refusal that is about the key, not a name: the same status and
    body, naming no name the halves share (a refusal about a name names it; one about a name in
    only one half could not be the same in both)."""
    if not (isinstance(a, UpstreamReply) and isinstance(b, UpstreamReply)) or a.ok or b.ok:
        return False
    if (a.status, a.body) != (b.status, b.body):
        return False
    common = {n for m in left for n in m.names}.intersection(n for m in right for n in m.names)
    return not any(str(n).encode() in a.body for n in common)


class Dispatcher:
    """The flush function of the batcher: a Flight per batch, then its metrics and log line."""

    def __init__(self, send: Send, metrics: Metrics, *, max_names: int | None = None) -> None:
        self._send = send
        self._metrics = metrics
        self._max_names = max_names

    async def flush(
        self, batch: ClosedBatch[BatchKey, Member, BatchTarget], resolve: Resolve
    ) -> None:
        started = time.perf_counter()
        batch_id = new_batch_id()

        async def send(*call: Any) -> Outcome:
            try:
                return await self._send(*call)
            finally:
                batch.heard()  # the upstream answered (or failed) a call: not stuck

        flight = Flight(
            send,
            batch.context,
            batch.key.shared_fields,
            resolve,
            max_names=self._max_names,
            call_id=batch_id,
        )
        try:
            await flight.run(batch.members)
        finally:
            self._record(batch, flight, batch_id, time.perf_counter() - started)

    def expire(self, batch: ClosedBatch[BatchKey, Member, BatchTarget]) -> UpstreamBusy:
        """The answer for a batch never sent: max_wait passed behind a flight for its key."""
        self._metrics.expired.labels(batch.key.endpoint).inc(batch.waiters)
        return UpstreamBusy("an earlier call for the same batch key is still running; not sent")

    def _record(
        self,
        batch: ClosedBatch[BatchKey, Member, BatchTarget],
        flight: Flight,
        batch_id: str,
        took: float,
    ) -> None:
        endpoint, m, first = batch.key.endpoint, self._metrics, flight.first
        calls = sum(flight.calls.values())
        for purpose, count in flight.calls.items():
            m.batch_calls.labels(endpoint, purpose).inc(count)
        m.batched.labels(endpoint).inc(batch.waiters)
        m.calls_saved.labels(endpoint).inc(max(batch.waiters - calls, 0))
        m.batch_size.labels(endpoint).observe(batch.waiters)
        m.batch_wait.labels(endpoint).observe(batch.closed_at - batch.opened_at)
        m.flushes.labels(endpoint, batch.reason.value).inc()
        m.bisections.labels(endpoint).inc(flight.splits)
        log.info(
            "batch_flushed",
            batch_id=batch_id,
            endpoint=endpoint,
            project=batch.key.project,
            principal=batch.key.principal[:12],
            size=batch.waiters,
            distinct=len(batch.members),
            reason=batch.reason.value,
            wait_max_ms=round((batch.closed_at - batch.opened_at) * 1000, 2),
            wait_min_ms=round((batch.closed_at - batch.last_at) * 1000, 2),
            upstream_status=first.status if first is not None else None,
            upstream_ms=round(took * 1000, 2),
            upstream_calls=calls,
        )
