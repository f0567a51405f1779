"""Sending a merged batch upstream and working out each caller's own answer.

On success every caller shares the reply. A failure that depends only on the key (bad token, no
such project) is shared without resending. Any other failure is bisected: the callers are split
in halves and each half resent, until every failing request stands alone and gets the upstream's
answer to exactly its own request. dstack's list endpoints change nothing when they fail
(shared/dstack-api.md §1.4), so resending is safe.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import structlog
from multidict import CIMultiDict
from yarl import URL

from .coalescing import ClosedBatch
from .endpoints import EndpointSpec, Item, render_body
from .metrics import Metrics
from .upstream import UpstreamError, UpstreamReply, post_json

log = structlog.get_logger(__name__)

Outcome = UpstreamReply | UpstreamError


@dataclass(frozen=True, slots=True)
class BatchKey:
    """Everything that can change the upstream's answer; requests merge only on equal keys.

    `target` rides along uncompared: the URL and headers of the key's first request, which
    (by construction of the key) the upstream treats the same as every other member's.
    """

    endpoint: str
    project: str
    principal: str  # keyed fingerprint of the credential headers; never the token itself
    varying: tuple[tuple[str, str], ...]  # other headers the upstream reads, e.g. X-API-Version
    equal: tuple[tuple[str, object], ...]  # body fields that must be equal, e.g. abort
    target: BatchTarget = field(compare=False, hash=False, repr=False)


@dataclass(frozen=True, slots=True)
class BatchTarget:
    spec: EndpointSpec
    url: URL
    headers: CIMultiDict[str]


@dataclass(eq=False, slots=True)
class _Tally:
    calls: int = 0
    first: Outcome | None = None  # the merged call's own outcome, before any split


class Dispatcher:
    """The flush function of the batcher: one merged call, then bisection if needed."""

    def __init__(self, session: aiohttp.ClientSession, metrics: Metrics, timeout: float) -> None:
        self._session = session
        self._metrics = metrics
        self._timeout = timeout

    async def flush(self, batch: ClosedBatch[BatchKey, Item]) -> dict[Item, Outcome]:
        key, spec = batch.key, batch.key.target.spec
        batch_id = uuid.uuid4().hex[:16]
        results: dict[Item, Outcome] = {}
        tally = _Tally()
        started = time.perf_counter()
        await self._settle(key, batch.items, batch_id, results, tally)
        first = tally.first
        m = self._metrics
        m.coalesced.labels(spec.name).inc(batch.waiters)
        m.calls_saved.labels(spec.name).inc(max(batch.waiters - tally.calls, 0))
        m.batch_size.labels(spec.name).observe(batch.waiters)
        m.batch_wait.labels(spec.name).observe(batch.closed_at - batch.opened_at)
        m.flushes.labels(spec.name, batch.reason.value).inc()
        log.info(
            "batch_flushed",
            batch_id=batch_id,
            endpoint=spec.name,
            project=key.project,
            principal=key.principal[:12],
            size=batch.waiters,
            distinct=len(batch.items),
            reason=batch.reason.value,
            wait_max_ms=round((batch.closed_at - batch.opened_at) * 1000, 2),
            wait_min_ms=round((batch.closed_at - batch.last_at) * 1000, 2),
            upstream_status=first.status if first is not None else None,
            upstream_ms=round((time.perf_counter() - started) * 1000, 2),
            upstream_calls=tally.calls,
            bisect_calls=tally.calls - 1,
        )
        return results

    async def _settle(
        self,
        key: BatchKey,
        items: Sequence[Item],
        batch_id: str,
        results: dict[Item, Outcome],
        tally: _Tally,
    ) -> None:
        spec = key.target.spec
        outcome = await self._call(key, items, batch_id, tally)
        if tally.first is None:
            tally.first = outcome
        if len(items) == 1 or _is_shared(outcome, spec):
            results.update(dict.fromkeys(items, outcome))
            return
        self._metrics.bisections.labels(spec.name).inc()
        middle = len(items) // 2
        await asyncio.gather(
            self._settle(key, items[:middle], batch_id, results, tally),
            self._settle(key, items[middle:], batch_id, results, tally),
        )

    async def _call(
        self, key: BatchKey, items: Sequence[Item], batch_id: str, tally: _Tally
    ) -> Outcome:
        spec, target = key.target.spec, key.target
        # One caller's request is sent as it was; merged lists drop repeated names.
        names: list[str | int] = (
            list(items[0])
            if len(items) == 1
            else list(dict.fromkeys(name for item in items for name in item))
        )
        headers = target.headers.copy()
        headers["X-Request-ID"] = f"{batch_id}-{tally.calls}"
        tally.calls += 1
        purpose = "batch" if tally.calls == 1 else "bisect"
        self._metrics.upstream_calls.labels(spec.name, purpose).inc()
        started = time.perf_counter()
        try:
            reply = await post_json(
                self._session,
                target.url,
                headers,
                render_body(spec, names, key.equal),
                timeout=self._timeout,
            )
        except UpstreamError as exc:
            self._metrics.upstream_errors.labels("batch", exc.code).inc()
            log.warning("upstream_failed", batch_id=batch_id, endpoint=spec.name, error=exc.code)
            return exc
        self._metrics.upstream_latency.labels("batch").observe(time.perf_counter() - started)
        return reply


def _is_shared(outcome: Outcome, spec: EndpointSpec) -> bool:
    """Whether every caller in the call earns this same outcome: success, a key-wide refusal, or
    a failure of the upstream itself (5xx, timeout), which is never resent (no amplification)."""
    if isinstance(outcome, UpstreamError):
        return True
    return outcome.ok or outcome.status in spec.key_wide_statuses or outcome.status >= 500
