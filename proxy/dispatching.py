"""Sending a merged batch upstream and working out each caller's own answer.

On success every caller shares the reply. A failure that depends only on the key (bad token, no
such project) is shared without resending. Any other failure is bisected: the callers are split
in halves and each half resent, until every failing request stands alone and gets the upstream's
answer to exactly its own request. dstack's list endpoints change nothing when they fail
(shared/dstack-api.md §1.4), so resending is safe.

Resending is bounded: a batch of N callers never costs more than 1 + N + 2·ceil(log2 N) calls
(one bad caller costs about 2·log2 N; when failures are dense the rest go singly), ordered
rounds included, with at most MAX_CONCURRENT_CALLS of them at once.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import aiohttp
import structlog

from .batcher import ClosedBatch
from .batches import BatchKey, BatchTarget, Member, Outcome
from .endpoints import EndpointSpec, render_body
from .metrics import Metrics
from .upstream import UpstreamError, post_json

log = structlog.get_logger(__name__)

MAX_CONCURRENT_CALLS: Final = 4  # per batch, while splitting: gentle on SQLite's one writer


@dataclass(eq=False, slots=True)
class _Flight:
    """One flush under way: its key, results so far, and call budget."""

    key: BatchKey
    target: BatchTarget
    batch_id: str
    budget: int  # calls still allowed; kept >= unresolved, so every caller can be answered
    unresolved: int  # callers without an outcome yet
    results: dict[Member, Outcome] = field(default_factory=dict)
    calls: int = 0
    first: Outcome | None = None  # the merged call's own outcome, before any split
    gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_CONCURRENT_CALLS))

    @property
    def spec(self) -> EndpointSpec:
        return self.target.spec

    def settle(self, members: Sequence[Member], outcome: Outcome) -> None:
        self.results.update(dict.fromkeys(members, outcome))
        self.unresolved -= len(members)


class Dispatcher:
    """The flush function of the batcher: one merged call, then bisection if needed."""

    def __init__(self, session: aiohttp.ClientSession, metrics: Metrics, timeout: float) -> None:
        self._session = session
        self._metrics = metrics
        self._timeout = timeout

    async def flush(
        self, batch: ClosedBatch[BatchKey, Member, BatchTarget]
    ) -> dict[Member, Outcome]:
        started = time.perf_counter()
        n = len(batch.members)
        # Beyond the first merged call, at most one call per caller plus a bisection's worth.
        budget = n + 2 * math.ceil(math.log2(n))
        flight = _Flight(batch.key, batch.context, uuid.uuid4().hex[:16], budget, n)
        # Where a repeated item fails (it must exist), callers naming the same item go in
        # separate calls, in arrival order, as if sent one after the other.
        rounds = [batch.members] if batch.context.spec.idempotent else _rounds(batch.members)
        await self._resolve(flight, rounds[0], await self._call(flight, rounds[0]))
        for members in rounds[1:]:  # each later round's merged call is paid from the budget
            if flight.budget - 1 >= flight.unresolved:
                flight.budget -= 1
                await self._resolve(flight, members, await self._call(flight, members))
            else:
                await self._one_by_one(flight, members)
        self._record(batch, flight, time.perf_counter() - started)
        return flight.results

    async def _resolve(self, flight: _Flight, members: Sequence[Member], outcome: Outcome) -> None:
        """Give `members`, who were just called together with `outcome`, their own answers."""
        if len(members) == 1 or _is_shared(outcome, flight.spec):
            flight.settle(members, outcome)
        elif flight.budget - 2 >= flight.unresolved:  # can split and still finish singly
            flight.budget -= 2
            self._metrics.bisections.labels(flight.spec.name).inc()
            halves = (members[: len(members) // 2], members[len(members) // 2 :])
            outcomes = await asyncio.gather(*(self._call(flight, h) for h in halves))
            await asyncio.gather(
                *(self._resolve(flight, h, o) for h, o in zip(halves, outcomes, strict=True))
            )
        else:  # failures are dense: asking each caller once is cheaper than splitting on
            await self._one_by_one(flight, members)

    async def _one_by_one(self, flight: _Flight, members: Sequence[Member]) -> None:
        flight.budget -= len(members)
        outcomes = await asyncio.gather(*(self._call(flight, (m,)) for m in members))
        for member, own in zip(members, outcomes, strict=True):
            flight.settle((member,), own)

    async def _call(self, flight: _Flight, members: Sequence[Member]) -> Outcome:
        spec, target = flight.spec, flight.target
        # One caller's request is sent as it was; merged lists drop repeated names.
        names: list[str | int] = (
            list(members[0].names)
            if len(members) == 1
            else list(dict.fromkeys(name for m in members for name in m.names))
        )
        headers = target.headers.copy()
        headers["X-Request-ID"] = f"{flight.batch_id}-{flight.calls}"
        flight.calls += 1
        self._metrics.upstream_calls.labels(
            spec.name, "batch" if flight.calls == 1 else "split"
        ).inc()
        body = render_body(spec, names, flight.key.shared_fields)
        reply: Outcome
        async with flight.gate:
            started = time.perf_counter()
            try:
                reply = await post_json(
                    self._session, target.url, headers, body, timeout=self._timeout
                )
            except UpstreamError as exc:
                self._metrics.upstream_errors.labels("batch", exc.code).inc()
                log.warning(
                    "upstream_failed", batch_id=flight.batch_id, endpoint=spec.name, error=exc.code
                )
                reply = exc
            else:
                self._metrics.upstream_latency.labels("batch").observe(
                    time.perf_counter() - started
                )
        if flight.first is None:
            flight.first = reply
        return reply

    def _record(
        self, batch: ClosedBatch[BatchKey, Member, BatchTarget], flight: _Flight, took: float
    ) -> None:
        spec, m, first = flight.spec, self._metrics, flight.first
        m.coalesced.labels(spec.name).inc(batch.waiters)
        m.calls_saved.labels(spec.name).inc(max(batch.waiters - flight.calls, 0))
        m.batch_size.labels(spec.name).observe(batch.waiters)
        m.batch_wait.labels(spec.name).observe(batch.closed_at - batch.opened_at)
        m.flushes.labels(spec.name, batch.reason.value).inc()
        log.info(
            "batch_flushed",
            batch_id=flight.batch_id,
            endpoint=spec.name,
            project=flight.key.project,
            principal=flight.key.principal[:12],
            size=batch.waiters,
            distinct=len(batch.members),
            reason=batch.reason.value,
            wait_max_ms=round((batch.closed_at - batch.opened_at) * 1000, 2),
            wait_min_ms=round((batch.closed_at - batch.last_at) * 1000, 2),
            upstream_status=first.status if first is not None else None,
            upstream_ms=round(took * 1000, 2),
            upstream_calls=flight.calls,
            bisect_calls=flight.calls - 1,
        )


def _is_shared(outcome: Outcome, spec: EndpointSpec) -> bool:
    """Whether every caller in the call earns this same outcome: success, a key-wide refusal, or
    a failure of the upstream itself (5xx, timeout), which is never resent (no amplification)."""
    if isinstance(outcome, UpstreamError):
        return True
    return outcome.ok or outcome.status in spec.key_wide_statuses or outcome.status >= 500


def _rounds(members: Sequence[Member]) -> list[list[Member]]:
    """Members in rounds where no item repeats, each after every earlier member it overlaps."""
    rounds: list[list[Member]] = []
    last: dict[str | int, int] = {}
    for member in members:
        at = max((last[n] + 1 for n in member.names if n in last), default=0)
        if at == len(rounds):
            rounds.append([])
        rounds[at].append(member)
        last.update(dict.fromkeys(member.names, at))
    return rounds
