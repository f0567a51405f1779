"""The upstream client, in one place: the one request-target check, the upstream URL and the
headers to send for a client request, the client sessions (pass-through's and batch calls'),
with their safety settings stated once, and what their failures mean. Shared by pass-through,
WebSockets and batches."""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Final, Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..errors import (
    BadRequestTarget,
    MethodNotAllowed,
    UnsendableHeader,
    UpstreamError,
    UpstreamUnavailable,
)
from ..errors import classify as classify_any
from .headers import SKIP_AUTO_HEADERS, is_trusted, upstream_request_headers


class Settings(Protocol):
    """What the edge reads of the configuration (`proxy.config.Config` has all of it). The edge
    does not import the configuration, whose endpoint table and policies belong to batching."""

    @property
    def upstream(self) -> str: ...
    @property
    def trusted_proxies(self) -> tuple[str, ...]: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def read_timeout(self) -> float: ...
    @property
    def batch_timeout(self) -> float: ...
    @property
    def keepalive_timeout(self) -> float: ...
    @property
    def pool_size(self) -> int: ...
    @property
    def buffer_bytes(self) -> int: ...
    @property
    def buffer_budget_bytes(self) -> int: ...
    @property
    def websocket_heartbeat(self) -> float: ...


# CONNECT would open a tunnel and TRACE echo credentials back; dstack serves neither.
ALLOWED_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
# Response headers as long and as many as a browser takes (Chrome: 256 KiB in all). aiohttp's
# client defaults (8190 bytes a line, 128 headers) made a longer one, which dstack relays from a
# service (a cookie, a CSP), a 502; uvicorn sets no limit.
RESPONSE_HEADER_BYTES: Final = 256 << 10
RESPONSE_HEADERS: Final = 1024


def check_target(request: web.Request) -> None:
    """Refuse what could reach another host or be read differently upstream: methods other
    than ALLOWED_METHODS (405), and targets that are not a plain path starting with exactly one
    `/` (absolute- or authority-form, `*`, `//host`) or that hold a backslash (400), and
    header values that are not UTF-8 (400: they would reach dstack changed).

    The entry handler (app.py) calls this for every request, so `upstream_url` can trust its
    input."""
    if request.method not in ALLOWED_METHODS:
        raise MethodNotAllowed(f"method {request.method} not allowed")
    raw = request.raw_path
    if not raw.startswith("/") or raw.startswith("//"):
        raise BadRequestTarget("request target must be a path")
    if "\\" in raw:
        raise BadRequestTarget("backslash in request target")
    for name, value in request.headers.items():
        # aiohttp's server keeps bytes that are not UTF-8 as surrogate escapes, and its client
        # writes headers as UTF-8 and skips those: the value would reach dstack changed (a
        # Content-Type dstack refuses would pass as JSON). `isascii` is O(1) in CPython.
        if not value.isascii() and not _is_utf8(value):
            raise UnsendableHeader(f"header {name} is not UTF-8; it cannot be passed on as sent")


def _is_utf8(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def upstream_url(origin: str, raw_path: str) -> URL:
    """The configured origin plus the client's raw path and query, never re-quoted.

    Built by concatenation, not `URL.join`, so the host always comes from configuration;
    `check_target` has refused every target that could change it."""
    return URL(origin + raw_path, encoded=True)


def request_target(
    request: web.Request, config: Settings, *, rewritten: bool = False
) -> tuple[URL, list[tuple[str, str]]]:
    """URL and headers (as pairs) for sending `request` to the configured upstream.
    `rewritten`: the body sent is not the one the client framed, so its length and encoding
    headers are dropped."""
    url = upstream_url(config.upstream, request.raw_path)
    headers = upstream_request_headers(
        request.headers,
        remote=request.remote,
        scheme=request.scheme,
        trusted_peer=is_trusted(request.remote, config.trusted_proxies),
        body_rewritten=rewritten,
    )
    return url, headers


class SentAsGiven(aiohttp.ClientRequest):
    """A client request that sends the headers it is given and invents none (no `Accept`,
    `Accept-Encoding`, `User-Agent` or `Content-Type` of aiohttp's own): what a session's
    `skip_auto_headers` does, with the set built once here instead of on every request
    (three microseconds each, docs/measurements.md). The proxy's sessions use it."""

    _skip_auto_headers = CIMultiDict((h, None) for h in SKIP_AUTO_HEADERS)

    def update_auto_headers(self, skip_auto_headers: object) -> None:
        """Nothing to add: every header aiohttp would add is in the skip set."""


def release(upstream: aiohttp.ClientResponse) -> None:
    """Done with a response read to its end: its connection goes back to the pool, unless the
    answer was a server error. uvicorn closes the connection right after the 500 it sends for an
    application that raised, without `Connection: close`; the next request sent on it failed
    with a reset, which the proxy answered 502 where dstack never gave one (a POST is not
    retried). A new connection after each 5xx costs the next request a connect."""
    if upstream.status >= 500:
        upstream.close()
    else:
        upstream.release()


def classify(exc: BaseException) -> UpstreamError:
    """The proxy's answer for an exception the client raised before any response."""
    if isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(exc, TimeoutError):
        return UpstreamUnavailable(f"upstream unreachable: {exc.os_error or exc}")
    return classify_any(exc)


def make_passthrough_session(config: Settings) -> aiohttp.ClientSession:
    """Pass-through's session (WebSockets' too): streams and downloads last as long as they last,
    and every idle gap while reading is bounded by `read_timeout`."""
    return _session(config, read_timeout=config.read_timeout)


def make_batch_session(config: Settings) -> aiohttp.ClientSession:
    """The session for batch calls only, so they never queue behind pass-through connections.
    Requests sent alone (intake) use it too, passed through as they came.

    Its pool has no limit: one flight per key already bounds the calls (at most a few per
    batch), and a cap below the number of keys in flight would run them less concurrently than
    the callers would have. Timeouts count from connecting, never the wait for a pooled
    connection: connect within `connect_timeout`, then the answer within `batch_timeout`. Its
    tracer tells a stale pooled connection (`Attempt`)."""
    return _session(config, read_timeout=config.batch_timeout, trace=[_reuse_tracer()])


def _session(
    config: Settings, *, read_timeout: float, trace: Sequence[aiohttp.TraceConfig] = ()
) -> aiohttp.ClientSession:
    """A client session with the proxy's safety settings, stated once for both sessions.

    The connector has no cap of its own (pass-through's `Forwarder` counts the connections it
    holds; one flight per key bounds batch calls) and closes idle connections after
    `keepalive_timeout`, below uvicorn's 5 s keep-alive: reusing a connection the server has just
    closed fails at random with "server disconnected"."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=config.keepalive_timeout),
        # A jar would replay one user's cookies to the next.
        cookie_jar=aiohttp.DummyCookieJar(),
        # aiohttp would otherwise invent headers, and the upstream might gzip for a client
        # that never asked; a batch call asks for its reply decoded itself (intake.calls).
        request_class=SentAsGiven,
        auto_decompress=False,
        trust_env=False,  # HTTP(S)_PROXY in the environment must not reroute upstream calls
        max_line_size=RESPONSE_HEADER_BYTES,
        max_field_size=RESPONSE_HEADER_BYTES,
        max_headers=RESPONSE_HEADERS,
        trace_configs=list(trace),
        # No total: connecting and every idle gap while reading are bounded, never the wait
        # for a pooled connection (the connector has no pool limit to wait for).
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout, sock_read=read_timeout
        ),
    )


class Attempt:
    """What one try of a call learnt about its connection, from the batch session's tracer:
    passed as `trace_request_ctx`."""

    __slots__ = ("reused",)

    def __init__(self) -> None:
        self.reused = False  # a pooled connection, opened for an earlier call


async def _on_reuse(
    _session: aiohttp.ClientSession,
    context: types.SimpleNamespace,
    _params: aiohttp.TraceConnectionReuseconnParams,
) -> None:
    if isinstance(attempt := context.trace_request_ctx, Attempt):
        attempt.reused = True


def _reuse_tracer() -> aiohttp.TraceConfig:
    tracer = aiohttp.TraceConfig()
    tracer.on_connection_reuseconn.append(_on_reuse)
    return tracer
