"""The batcher's flush function: a `Flight` per batch (flight.py), then its metrics and its log
line; and the answer for a batch that was never sent."""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any

import structlog

from ..errors import UpstreamBusy
from ..ops.metrics import Metrics
from .batcher import ClosedBatch
from .batches import BatchKey, BatchTarget, Member, Outcome
from .flight import Flight, Resolve, Send, new_batch_id

log = structlog.get_logger(__name__)

BATCH_OPENED: ContextVar[float | None] = ContextVar("batch_opened", default=None)
"""When the batch being sent took its first caller (the running loop's clock); set by the
dispatcher for the flight's calls. A caller is owed an answer within batch_timeout plus the
connect timeout of arriving, so a batch that waited behind a slow flight gets only what is left
of that, never a whole batch_timeout of its own (docs/measurements.md, Faults under a burst)."""


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

        opened = BATCH_OPENED.set(batch.opened_at)  # the calls answer within the callers' time
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
            BATCH_OPENED.reset(opened)
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
