"""The proxy's own errors, with the one status mapping: each error carries the status and code
the client gets. Free of HTTP libraries, so the batching core can use them; the edge renders
them (`edge.answers.error_response`) and tells an HTTP client's failures apart
(`edge.upstream.classify`).
"""

from __future__ import annotations

from typing import Final

PROXY_ERROR_HEADER: Final = "X-Proxy-Error"


class ProxyError(Exception):
    """A request the proxy answers itself; `status` and `code` are what the client sees."""

    status: int = 500
    code: str = "proxy_error"


class BadRequestTarget(ProxyError):
    """A target that is not a plain path: it could name another host."""

    status = 400
    code = "bad_request_target"


class UnsendableHeader(ProxyError):
    """A header value the proxy cannot send upstream byte for byte (bytes that are not UTF-8)."""

    status = 400
    code = "bad_header"


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
    """The proxy's answer for an exception raised by an upstream call before any response. The
    edge's `classify` also names the unreachable host of an HTTP client's connect failure."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError is one too
        return UpstreamTimeout("upstream timed out")
    return UpstreamUnavailable(f"upstream failed: {type(exc).__name__}")
