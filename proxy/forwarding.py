"""The pass-through path: one client request becomes one upstream request, both bodies streamed,
headers filtered by `headers.py`. Errors before the response starts become dstack-shaped 502/504;
after that the client connection is aborted rather than given a fake status."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
import structlog
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from .headers import client_response_headers, rewrite_location
from .keys import CONFIG_KEY, METRICS_KEY, SESSION_KEY
from .upstream import UpstreamError, classify, error_response, request_target

log = structlog.get_logger(__name__)

# aiohttp would otherwise invent these, and the upstream might gzip for a client that never asked.
SKIP_AUTO_HEADERS: Final = (hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.USER_AGENT, hdrs.CONTENT_TYPE)
_NO_BODY_STATUSES: Final = frozenset({204, 304})


def upstream_request(
    request: web.Request, *, rewritten: bool = False
) -> tuple[URL, CIMultiDict[str]]:
    """URL and headers for forwarding `request` to the configured upstream."""
    return request_target(request, request.app[CONFIG_KEY], rewritten=rewritten)


async def forward(request: web.Request, *, prefix: bytes = b"") -> web.StreamResponse:
    """Send `request` upstream and stream the answer back. `prefix` is body the proxy has
    already read from the client (the rest, if any, is still in `request.content`)."""
    session = request.app[SESSION_KEY]
    metrics = request.app[METRICS_KEY]
    has_body = bool(prefix) or request.body_exists
    started = time.perf_counter()
    try:
        url, headers = upstream_request(request)
        upstream = await session.request(
            request.method,
            url,
            headers=headers,
            data=_stream_body(request, prefix) if has_body else None,
            allow_redirects=False,
            skip_auto_headers=SKIP_AUTO_HEADERS,
            auto_decompress=False,
        )
    except (aiohttp.ClientError, TimeoutError, UpstreamError) as exc:
        error = classify(exc)
        metrics.upstream_errors.labels("passthrough", error.code).inc()
        log.warning("upstream_failed", error=error.code, detail=str(error))
        return error_response(error)
    metrics.upstream_latency.labels("passthrough").observe(time.perf_counter() - started)
    async with upstream:
        return await _copy_response(request, upstream)


async def _stream_body(request: web.Request, prefix: bytes) -> AsyncIterator[bytes]:
    # An error from the client side (disconnect mid-upload) propagates and aborts the upstream
    # request: ending the chunked body cleanly would hand dstack a truncated body as complete.
    if prefix:
        yield prefix
    async for chunk in request.content.iter_any():
        yield chunk


async def _copy_response(
    request: web.Request, upstream: aiohttp.ClientResponse
) -> web.StreamResponse:
    config = request.app[CONFIG_KEY]
    headers = client_response_headers(upstream.headers)
    for name in (hdrs.LOCATION, hdrs.CONTENT_LOCATION):
        if name in headers:
            headers[name] = rewrite_location(
                headers[name],
                upstream_origin=config.upstream,
                client_origin=f"{request.scheme}://{request.host}",
            )
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    try:
        await response.prepare(request)
        if request.method != hdrs.METH_HEAD and upstream.status not in _NO_BODY_STATUSES:
            await _copy_body(request, upstream, response)
        await response.write_eof()
    except ConnectionResetError:  # the client left; aiohttp's ClientConnectionResetError too
        request.app[METRICS_KEY].disconnects.labels("passthrough").inc()
        log.debug("client_disconnected")
        upstream.close()  # a half-read upstream connection must not go back to the pool
    except _UpstreamBroke:
        upstream.close()
        _abort(request)  # the status is already sent: a truncated body must not look complete
    return response


class _UpstreamBroke(Exception):
    """The upstream failed after the response had started."""


async def _copy_body(
    request: web.Request, upstream: aiohttp.ClientResponse, response: web.StreamResponse
) -> None:
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
