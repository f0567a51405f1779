"""Batch calls over HTTP: the `send` the dispatcher is given in production, on the batch
calls' own session (edge.upstream.make_batch_session), kept apart from pass-through traffic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Final

import aiohttp
import structlog
from multidict import CIMultiDict
from yarl import URL

from ..batching.batches import BatchTarget, Outcome, UpstreamReply
from ..batching.dispatching import BATCH_OPENED
from ..batching.endpoints import SharedFields, render_body
from ..edge.upstream import Attempt, classify, release
from ..errors import UpstreamBusy, UpstreamError
from ..ops.metrics import Metrics

log = structlog.get_logger(__name__)


def _timeout(session: aiohttp.ClientSession, deadline: float | None) -> aiohttp.ClientTimeout:
    """The session's timeouts, and none of them past `deadline` (the loop's clock)."""
    usual = session.timeout
    if deadline is None:
        return usual
    left = deadline - asyncio.get_running_loop().time()
    if left <= 0:
        raise UpstreamBusy("the callers' time ran out behind an earlier call; not sent")
    connect = usual.sock_connect
    return aiohttp.ClientTimeout(
        total=left,
        sock_connect=left if connect is None else min(connect, left),
        sock_read=usual.sock_read,
    )


_MAX_STALE: Final = 4  # pooled connections the upstream closed, skipped per call at most


async def post_json(
    session: aiohttp.ClientSession,
    url: URL,
    headers: CIMultiDict[str],
    body: bytes,
    deadline: float | None = None,
) -> UpstreamReply:
    """POST `body` and read the whole answer, by `deadline` (the loop's clock) if given, every
    try included. It is sent again only where it cannot have reached the upstream: a connection
    that could not be opened (once more), or a pooled one that the upstream had closed and that
    failed before any answer began (up to _MAX_STALE times). uvicorn closes a connection right
    after a 500 whose application raised, so the next call on it would otherwise fail: the probe
    after an item's 500, say."""
    connect_failed, stale = False, 0
    while True:
        attempt, answered = Attempt(), False
        try:
            async with session.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                auto_decompress=True,  # the proxy reads this body itself
                trace_request_ctx=attempt,
                timeout=_timeout(session, deadline),
            ) as resp:
                answered = True
                reply = UpstreamReply(resp.status, resp.headers, await resp.read())
                release(resp)
                return reply
        except aiohttp.ClientConnectorError as exc:
            if connect_failed:
                raise classify(exc) from exc
            connect_failed = True
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if answered or not attempt.reused or stale == _MAX_STALE:
                raise classify(exc) from exc
            stale += 1
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise classify(exc) from exc


class HttpSend:
    """Sends one batch call and gives its outcome; counts its latency and failures."""

    def __init__(self, session: aiohttp.ClientSession, metrics: Metrics) -> None:
        self._session = session
        self._metrics = metrics
        # What a caller may wait in all, from arriving: batch_timeout plus the connect timeout.
        timeout = session.timeout
        self._owed = (timeout.sock_read or 0.0) + (timeout.sock_connect or 0.0) or None

    async def __call__(
        self, target: BatchTarget, names: Sequence[str | int], shared: SharedFields, call_id: str
    ) -> Outcome:
        headers = target.headers.copy()
        headers["X-Request-ID"] = call_id
        body = render_body(target.spec, names, shared)
        opened = BATCH_OPENED.get()
        deadline = None if opened is None or self._owed is None else opened + self._owed
        started = time.perf_counter()
        try:
            reply = await post_json(self._session, target.url, headers, body, deadline)
        except UpstreamError as exc:
            self._metrics.upstream_errors.labels("batch", exc.code).inc()
            log.warning(
                "upstream_failed", call_id=call_id, endpoint=target.spec.name, error=exc.code
            )
            return exc
        self._metrics.upstream_latency.labels("batch").observe(time.perf_counter() - started)
        return reply
