"""The upstream URL, the errors upstream requests raise, and the dstack-shaped error responses
the proxy answers with when the upstream fails. (Batch calls live in calls.py.)"""

from __future__ import annotations

import asyncio
from typing import Final

import aiohttp
import orjson
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from .config import Config
from .headers import upstream_request_headers


class UpstreamError(Exception):
    """The upstream gave no usable answer; `status` is what the proxy answers instead."""

    status: int = 502
    code: str = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    status = 502
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError, TimeoutError):
    status = 504
    code = "upstream_timeout"


class BadRequestTarget(UpstreamError):
    status = 400
    code = "bad_request_target"


PROXY_ERROR_HEADER: Final = "X-Proxy-Error"


def upstream_url(origin: str, raw_path: str) -> URL:
    """The configured origin plus the client's raw path and query, never re-quoted.

    Built by concatenation, not `URL.join`: a path like `//host/x` must not change the host
    (PROXY-PITFALLS A14); callers have rejected such targets already.
    """
    if not raw_path.startswith("/") or raw_path.startswith("//"):
        raise BadRequestTarget(f"unsupported request target {raw_path[:64]!r}")
    return URL(origin + raw_path, encoded=True)


# placeholder until edge lands: moved here from forwarding.upstream_request.
def request_target(
    request: web.Request, config: Config, *, rewritten: bool = False
) -> tuple[URL, CIMultiDict[str]]:
    """URL and headers for sending `request` to the configured upstream."""
    url = upstream_url(config.upstream, request.raw_path)
    headers = upstream_request_headers(
        request.headers,
        remote=request.remote,
        scheme=request.scheme,
        trusted_peer=request.remote in config.trusted_proxies,
        body_rewritten=rewritten or hdrs.CONTENT_ENCODING in request.headers,
    )
    return url, headers


def error_response(exc: UpstreamError) -> web.Response:
    """dstack's error shape, marked as the proxy's own so operators can tell them apart."""
    body = {"detail": [{"msg": str(exc) or exc.code.replace("_", " "), "code": exc.code}]}
    return web.Response(
        status=exc.status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={PROXY_ERROR_HEADER: exc.code},
    )


def classify(exc: BaseException) -> UpstreamError:
    """The proxy's answer for an exception raised by an upstream request before any response."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, asyncio.TimeoutError):  # aiohttp's ServerTimeoutError is one too
        return UpstreamTimeout("upstream timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamUnavailable(f"upstream unreachable: {exc.os_error or exc}")
    return UpstreamUnavailable(f"upstream failed: {type(exc).__name__}")
