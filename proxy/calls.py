"""Batch calls over HTTP: the `send` the dispatcher is given in production, and the client
session it uses, kept apart from pass-through traffic."""

from __future__ import annotations

import time
from collections.abc import Sequence

import aiohttp
import structlog
from multidict import CIMultiDict
from yarl import URL

from .batches import BatchTarget, Outcome, SharedFields, UpstreamReply
from .config import Config
from .endpoints import render_body
from .errors import UpstreamError, classify
from .metrics import Metrics
from .upstream import SentAsGiven

log = structlog.get_logger(__name__)


def make_batch_session(config: Config) -> aiohttp.ClientSession:
    """The session for batch calls only, so they never queue behind pass-through connections.

    Its pool has no limit: one flight per key already bounds the calls (at most a few per
    batch), and a cap below the number of keys in flight would run them less concurrently than
    the callers would have. Timeouts count from connecting, never the wait for a pooled
    connection: connect within `connect_timeout`, then the answer within `batch_timeout`.
    Requests sent alone (intake.py) use it too, passed through as they came.
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=config.keepalive_timeout),
        cookie_jar=aiohttp.DummyCookieJar(),  # never replay one user's cookies to the next
        request_class=SentAsGiven,
        trust_env=False,
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout, sock_read=config.batch_timeout
        ),
    )


async def post_json(
    session: aiohttp.ClientSession, url: URL, headers: CIMultiDict[str], body: bytes
) -> UpstreamReply:
    """POST `body` and read the whole answer. A connection that could not even be opened is
    tried once more, since nothing reached the upstream; anything later is not resent."""
    for attempt in (1, 2):
        try:
            async with session.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                auto_decompress=True,  # the proxy reads this body itself
            ) as resp:
                return UpstreamReply(resp.status, resp.headers, await resp.read())
        except aiohttp.ClientConnectorError as exc:
            if attempt == 2:
                raise classify(exc) from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise classify(exc) from exc
    raise AssertionError("unreachable")


class HttpSend:
    """Sends one batch call and gives its outcome; counts its latency and failures."""

    def __init__(self, session: aiohttp.ClientSession, metrics: Metrics) -> None:
        self._session = session
        self._metrics = metrics

    async def __call__(
        self, target: BatchTarget, names: Sequence[str | int], shared: SharedFields, call_id: str
    ) -> Outcome:
        headers = target.headers.copy()
        headers["X-Request-ID"] = call_id
        body = render_body(target.spec, names, shared)
        started = time.perf_counter()
        try:
            reply = await post_json(self._session, target.url, headers, body)
        except UpstreamError as exc:
            self._metrics.upstream_errors.labels("batch", exc.code).inc()
            log.warning(
                "upstream_failed", call_id=call_id, endpoint=target.spec.name, error=exc.code
            )
            return exc
        self._metrics.upstream_latency.labels("batch").observe(time.perf_counter() - started)
        return reply
