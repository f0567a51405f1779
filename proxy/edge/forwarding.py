"""The pass-through path: one client request becomes one upstream request.

The upstream connection is held as briefly as possible, like nginx's `proxy_buffering`: a body
of known length up to `buffer_bytes` is read whole (while the memory budget allows) and the
connection goes back to the pool before the client has read a byte, so a slow reader never
holds it. Larger or unknown-length bodies are streamed with back-pressure. At most `pool_size`
requests wait on the upstream at once (for its headers, and for a body read whole); waiting for
one of those slots is bounded by the connect timeout, then the answer is 503. Streams, streamed
uploads and WebSockets hold no slot (docs/design.md, Slow clients and connection limits).

Errors before the response starts become dstack-shaped answers (errors.py); after it started,
the client connection is aborted so a truncated body never looks complete.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
import structlog
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import ProxyError, UpstreamBusy, UpstreamError
from ..ops.metrics import Metrics
from .answers import error_response
from .headers import client_response_headers, rewrite_location
from .slots import Slots
from .upstream import Settings, classify, release, request_target

log = structlog.get_logger(__name__)

# Request bodies up to this size are read before the upstream is asked: a slow upload then
# holds no upstream connection either.
REQUEST_BUFFER_BYTES: Final = 64 << 10
_NO_BODY_STATUSES: Final = frozenset({204, 304})
# A relayed response whose upstream sent no Content-Type (see `keep_untyped`).
UNTYPED: Final = web.RequestKey("dstack_coalescer.untyped", bool)
_NO_SLOTS: Final = Slots(None)  # for what holds none: counts nothing, never waits
_LOCATIONS: Final = frozenset({"location", "content-location"})


class Forwarder:
    """Pass-through for one app: its session, connection slots and response-buffer budget.

    `kind` labels its metrics. The one for requests sent alone on a batchable path (intake.py)
    has no slot limit, like batch calls: one flight per key bounds them already."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: Settings,
        metrics: Metrics,
        *,
        kind: str = "passthrough",
        pooled: bool = True,
    ) -> None:
        self._session = session
        self._config = config
        self._slots = Slots(config.pool_size if pooled else None)
        self._budget = config.buffer_budget_bytes  # bytes still free for whole responses
        self._kind = kind
        self._latency = metrics.upstream_latency.labels(kind)
        self._disconnects = metrics.disconnects.labels(kind)
        self._errors = metrics.upstream_errors

    async def forward(self, request: web.Request, prefix: bytes = b"") -> web.StreamResponse:
        """Send `request` upstream and relay the answer. `prefix` is body the proxy has already
        read from the client (the rest, if any, is still in `request.content`)."""
        try:
            body = await _request_body(request, prefix)
        except ConnectionError:  # the client left mid-upload: nothing goes upstream
            self._client_left()
            return web.Response(status=400)
        # An upload streamed at the client's pace lasts as long as its client wants: like a
        # response stream or a WebSocket, it holds no slot.
        slots = _NO_SLOTS if isinstance(body, AsyncIterator) else self._slots
        if not (slots.take_now() or await slots.take(self._config.connect_timeout)):
            return self._fail(UpstreamBusy("every upstream connection is in use; try again"))
        try:
            started = time.perf_counter()
            url, headers = request_target(request, self._config)
            upstream = await self._session.request(
                request.method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                auto_decompress=False,
            )
        except (aiohttp.ClientError, TimeoutError, UpstreamError) as exc:
            slots.give()
            if isinstance(broken := request.content.exception(), HttpProcessingError):
                raise broken from None  # not the upstream's fault: the client's body broke
            return self._fail(classify(exc))
        except BaseException:
            slots.give()
            raise
        self._latency.observe(time.perf_counter() - started)
        size = _body_size(request, upstream)
        if size is not None and size <= self._config.buffer_bytes and size <= self._budget:
            return await self._answer_whole(request, upstream, size, slots)
        # A stream lasts as long as its client wants: like a WebSocket, it holds no slot.
        slots.give()
        async with upstream:
            response = await self._stream(request, upstream)
            release(upstream)  # a no-op where the stream broke and closed it
            return response

    async def _answer_whole(
        self, request: web.Request, upstream: aiohttp.ClientResponse, size: int, slots: Slots
    ) -> web.StreamResponse:
        """Read the body, give the connection back, then answer: a slow client costs memory
        (bounded by the budget), never an upstream connection."""
        self._budget -= size
        try:
            try:
                body = await upstream.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("upstream_stream_failed", error=type(exc).__name__)
                return self._fail(classify(exc))  # nothing sent yet: a clean 502/504
            finally:
                release(upstream)
                slots.give()
            response = web.Response(
                status=upstream.status,
                reason=upstream.reason,
                headers=self._response_headers(request, upstream),
                body=body,
            )
            try:
                await response.prepare(request)
                await response.write_eof()  # returns once the client has nearly all of it
            except ConnectionError:  # the client left (reset, or lost while we waited on it)
                self._client_left()
            except asyncio.CancelledError:  # the drain deadline came mid-answer
                _abort(request)
                raise
            return response
        finally:
            self._budget += size

    async def _stream(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=self._response_headers(request, upstream),
        )
        try:
            await response.prepare(request)
            if request.method != hdrs.METH_HEAD and upstream.status not in _NO_BODY_STATUSES:
                await _copy_body(upstream, response)
            await response.write_eof()
        except ConnectionError:  # the client left
            self._client_left()
            upstream.close()  # a half-read upstream connection must not go back to the pool
        except _UpstreamBroke:
            upstream.close()
            _abort(request)  # the status is already sent: a truncated body must not look whole
        except asyncio.CancelledError:  # the drain deadline came mid-body: the same
            upstream.close()
            _abort(request)
            raise
        return response

    def _response_headers(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> list[tuple[str, str]]:
        headers = client_response_headers(upstream.headers)
        if hdrs.CONTENT_TYPE not in upstream.headers:
            request[UNTYPED] = True
        if hdrs.LOCATION in upstream.headers or hdrs.CONTENT_LOCATION in upstream.headers:
            client_origin = f"{request.scheme}://{request.host}"
            for i, (name, value) in enumerate(headers):
                if name.lower() in _LOCATIONS:
                    location = rewrite_location(
                        value, upstream_origin=self._config.upstream, client_origin=client_origin
                    )
                    headers[i] = (name, location)
        return headers

    def _fail(self, error: ProxyError) -> web.Response:
        self._errors.labels(self._kind, error.code).inc()
        log.warning("upstream_failed", error=error.code, detail=str(error))
        return error_response(error)

    def _client_left(self) -> None:
        self._disconnects.inc()
        log.debug("client_disconnected")


async def keep_untyped(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: aiohttp labels every response with a body that has no
    Content-Type `application/octet-stream`; a relayed one goes without, as its upstream sent it
    (a browser shows an unlabelled page it would download as octet-stream)."""
    if UNTYPED in request:
        response.headers.popall(hdrs.CONTENT_TYPE, None)


def _body_size(request: web.Request, upstream: aiohttp.ClientResponse) -> int | None:
    """Bytes of body the upstream will send, None when unknown (chunked or until close)."""
    if request.method == hdrs.METH_HEAD or upstream.status in _NO_BODY_STATUSES:
        return 0
    return upstream.content_length


async def _request_body(request: web.Request, prefix: bytes) -> bytes | AsyncIterator[bytes] | None:
    """The body to send: whole bytes when small and framed by Content-Length, else a stream."""
    if not prefix and not request.body_exists:
        return None
    if request.content.at_eof() and prefix:
        return prefix
    length = request.content_length
    if length is not None and length <= REQUEST_BUFFER_BYTES:
        return prefix + await request.content.read()
    return _stream_body(request, prefix)


async def _stream_body(request: web.Request, prefix: bytes) -> AsyncIterator[bytes]:
    # An error from the client side (disconnect mid-upload) propagates and aborts the upstream
    # request: ending the chunked body cleanly would hand dstack a truncated body as complete.
    if prefix:
        yield prefix
    async for chunk in request.content.iter_any():
        yield chunk


class _UpstreamBroke(Exception):
    """The upstream failed after the response had started."""


async def _copy_body(upstream: aiohttp.ClientResponse, response: web.StreamResponse) -> None:
    while True:
        try:
            chunk = await upstream.content.readany()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("upstream_stream_failed", error=type(exc).__name__)
            raise _UpstreamBroke from exc
        if not chunk:
            return
        await response.write(chunk)  # awaited: back-pressure against slow readers


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()
