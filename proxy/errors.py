"""The proxy's own errors and the one place that turns them into answers.

Each error carries the status the client gets; `error_response` renders it in dstack's own error
shape (`{"detail": [{"msg", "code"}]}`, docs/dstack-api.md, Errors), so clients that show
dstack's errors show these too, marked with `X-Proxy-Error` so operators can tell them apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Final

import aiohttp
import orjson
from aiohttp import web

PROXY_ERROR_HEADER: Final = "X-Proxy-Error"


class ProxyError(Exception):
    """A request the proxy answers itself; `status` and `code` are what the client sees."""

    status: int = 500
    code: str = "proxy_error"


class BadRequestTarget(ProxyError):
    """A target that is not a plain path: it could name another host."""

    status = 400
    code = "bad_request_target"


class MethodNotAllowed(ProxyError):
    status = 405
    code = "method_not_allowed"


class UpstreamError(ProxyError):
    """The upstream gave no usable answer."""

    status = 502
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    status = 502
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError, TimeoutError):
    """No answer in time. The request may still have run upstream."""

    status = 504
    code = "upstream_timeout"


class UpstreamBusy(UpstreamError):
    """Every upstream connection the proxy may hold stayed in use for the connect timeout."""

    status = 503
    code = "upstream_busy"


def classify(exc: BaseException) -> UpstreamError:
    """The proxy's answer for an exception raised by an upstream request before any response."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, asyncio.TimeoutError):  # aiohttp's ServerTimeoutError is one too
        return UpstreamTimeout("upstream timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamUnavailable(f"upstream unreachable: {exc.os_error or exc}")
    return UpstreamUnavailable(f"upstream failed: {type(exc).__name__}")


def error_response(exc: ProxyError, headers: Mapping[str, str] | None = None) -> web.Response:
    """`exc` as dstack's error shape, with its status and `X-Proxy-Error: <code>`."""
    body = {"detail": [{"msg": str(exc) or exc.code.replace("_", " "), "code": exc.code}]}
    return web.Response(
        status=exc.status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={PROXY_ERROR_HEADER: exc.code, **(headers or {})},
    )
