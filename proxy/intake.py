"""The batchable route: whether a request fits its endpoint exactly, its key, its admission to a
batch, and the caller's own answer. When in any doubt, the request passes through untouched."""

from __future__ import annotations

import asyncio
import enum
import itertools
import secrets
from collections.abc import Awaitable
from functools import partial
from typing import Final, Protocol

import structlog
from aiohttp import hdrs, web
from aiohttp.helpers import parse_content_type
from multidict import CIMultiDict

from .batcher import Batcher, BatcherClosed
from .batches import (
    READ_HEADERS,
    BatchKey,
    BatchTarget,
    Member,
    UpstreamReply,
    batch_key,
)
from .config import Config
from .endpoints import EndpointSpec, match_project, parse_body
from .errors import UpstreamError, UpstreamTimeout, error_response
from .headers import client_response_headers, connection_tokens
from .limits import Limits
from .metrics import Metrics
from .shadow import Shadow
from .state import State
from .upstream import request_target

log = structlog.get_logger(__name__)

BODY_READ_TIMEOUT: Final = 10.0
_JSON_CHARSETS: Final = frozenset({None, "utf-8", "utf8"})
_PLAIN_CONNECTION: Final = frozenset({"keep-alive", "close"})
# A batch call's reply is read whole and decoded, then rendered anew for each caller: its length
# and encoding describe that upstream message, and a cookie on it was set for no one caller.
_REPLY_DROPPED: Final = (hdrs.CONTENT_LENGTH, hdrs.CONTENT_ENCODING, hdrs.SET_COOKIE)

ReplyBatcher = Batcher[BatchKey, Member, UpstreamReply, BatchTarget]


class BypassReason(enum.StrEnum):
    """Why a request on a batchable path went through singly (the bypass metric's label)."""

    CLOSED = "closed"  # draining, or the batcher already closed
    QUERY = "query"
    CONTENT_TYPE = "content_type"
    CONTENT_ENCODING = "content_encoding"
    CREDENTIALS = "credentials"  # not exactly one Authorization, or more than one Cookie
    HEADERS = "headers"  # a repeated read header, or a Connection header naming headers
    TOO_LARGE = "too_large"
    SLOW_BODY = "slow_body"
    BODY = "body"  # not exactly the endpoint's fields, JSON types and a non-empty list
    PENDING_LIMIT = "pending_limit"
    KEY_LIMIT = "key_limit"
    BYTES_LIMIT = "bytes_limit"


class Passthrough(Protocol):
    """Sends a request upstream as it came; `prefix` is body the proxy has already read."""

    def __call__(
        self, request: web.Request, *, prefix: bytes = ...
    ) -> Awaitable[web.StreamResponse]: ...


class Intake:
    """The batchable route of one app. Requests that fit go to `batcher` (in shadow mode: are
    observed, then go through), the rest to `passthrough`; it closes `batcher` on shutdown."""

    def __init__(
        self,
        config: Config,
        batcher: ReplyBatcher,
        limits: Limits,
        metrics: Metrics,
        passthrough: Passthrough,
        state: State,
    ) -> None:
        self._config = config
        self._batcher = batcher
        self._limits = limits
        self._metrics = metrics
        self._passthrough = passthrough
        self._state = state
        self._specs = config.enabled_endpoints if config.mode != "off" else ()
        # Every path `match` could accept starts with one of these (one C call rules most out).
        self._prefixes = tuple({spec.prefix for spec in self._specs})
        self._secret = secrets.token_bytes(32)  # per process: fingerprints never leave memory
        self._serials = itertools.count(1)  # distinct members where repeats are not harmless
        self._shadow = Shadow(config, limits, metrics) if config.mode == "shadow" else None
        metrics.pending.set_function(lambda: self.pending)

    @property
    def pending(self) -> int:
        """Requests waiting in batches."""
        return self._batcher.pending + (self._shadow.pending if self._shadow else 0)

    def match(self, request: web.Request) -> tuple[EndpointSpec, str] | None:
        """The endpoint and normalised project if the request targets a batchable path."""
        if request.method != hdrs.METH_POST or not request.raw_path.startswith(self._prefixes):
            return None
        path = request.raw_path.partition("?")[0]
        for spec in self._specs:
            if (project := match_project(spec, path)) is not None:
                return spec, project
        return None

    async def handle(
        self, request: web.Request, spec: EndpointSpec, project: str
    ) -> web.StreamResponse:
        """Batch the request if it fits `spec` exactly; otherwise pass it through."""
        if self._state.draining:
            return await self._bypass(request, BypassReason.CLOSED)
        if reason := precheck(request, self._config.max_body_bytes):
            return await self._bypass(request, reason)
        body, unread = await read_capped(request, self._config.max_body_bytes)
        parsed = parse_body(spec, body) if unread is None else None
        if parsed is None:
            return await self._bypass(request, unread or BypassReason.BODY, body)
        key = batch_key(spec, project, parsed, request.headers, self._secret)
        member = Member(parsed.names, 0 if spec.idempotent else next(self._serials))
        if self._shadow is not None:
            self._shadow.observe(key, member, len(body))
            return await self._passthrough(request, prefix=body)
        return await self._batch(request, key, member, spec, body)

    async def aclose(self, timeout: float | None = None) -> None:
        """Flush every open batch now and wait for the flights (SIGTERM); callers still
        waiting after `timeout` are answered 504, as their upstream call may or may not run."""
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        await self._batcher.aclose(
            deadline, UpstreamTimeout("the upstream did not answer before the proxy shut down")
        )
        if self._shadow is not None:
            await self._shadow.aclose(timeout)

    async def _batch(
        self,
        request: web.Request,
        key: BatchKey,
        member: Member,
        spec: EndpointSpec,
        body: bytes,
    ) -> web.StreamResponse:
        if refused := self._limits.admit(key, len(body)):
            return await self._bypass(request, BypassReason(refused), body)
        try:
            # The target is built only if this request opens a batch: joiners would hold one each.
            reply = await self._batcher.submit(key, member, partial(self._target, request, spec))
        except asyncio.CancelledError:  # the client left, with handler_cancellation on
            self._metrics.disconnects.labels("batched").inc()  # its names still go upstream
            raise
        except BatcherClosed:
            return await self._bypass(request, BypassReason.CLOSED, body)
        except UpstreamError as exc:
            return error_response(exc)
        finally:
            self._limits.release(key, len(body))
        if request.transport is None or request.transport.is_closing():
            self._metrics.disconnects.labels("batched").inc()  # left, yet its names went
        return render(reply)

    def _target(self, request: web.Request, spec: EndpointSpec) -> BatchTarget:
        url, pairs = request_target(request, self._config, rewritten=True)
        headers = CIMultiDict(pairs)
        headers[hdrs.CONTENT_TYPE] = "application/json"
        headers[hdrs.ACCEPT_ENCODING] = "identity"
        return BatchTarget(spec, url, headers)

    async def _bypass(
        self, request: web.Request, reason: BypassReason, body: bytes = b""
    ) -> web.StreamResponse:
        self._metrics.bypasses.labels(reason.value).inc()
        return await self._passthrough(request, prefix=body)


def precheck(request: web.BaseRequest, max_body_bytes: int) -> BypassReason | None:
    """Why the request line or headers rule out batching, if they do (the body comes later)."""
    headers = request.headers
    if "?" in request.raw_path:
        return BypassReason.QUERY
    if (content_type := headers.get(hdrs.CONTENT_TYPE)) is not None and not _is_json(content_type):
        return BypassReason.CONTENT_TYPE
    if hdrs.CONTENT_ENCODING in headers:
        return BypassReason.CONTENT_ENCODING
    if len(headers.getall(hdrs.AUTHORIZATION, ())) != 1 or len(headers.getall(hdrs.COOKIE, ())) > 1:
        return BypassReason.CREDENTIALS
    if any(len(headers.getall(h, ())) > 1 for h in READ_HEADERS):
        return BypassReason.HEADERS
    if connection_tokens(headers) - _PLAIN_CONNECTION:
        # It would strip a header the key was built with from the batch call (Authorization).
        return BypassReason.HEADERS
    if (request.content_length or 0) > max_body_bytes:
        return BypassReason.TOO_LARGE
    return None


async def read_capped(request: web.Request, cap: int) -> tuple[bytes, BypassReason | None]:
    """Up to cap+1 bytes of body, and why the rest is unread (None: it was all read). A body
    over the cap or slower than BODY_READ_TIMEOUT is then streamed through as it comes."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_READ_TIMEOUT):
            while size <= cap:
                chunk = await request.content.readany()
                if not chunk:
                    return b"".join(chunks), None
                chunks.append(chunk)
                size += len(chunk)
    except TimeoutError:
        return b"".join(chunks), BypassReason.SLOW_BODY
    return b"".join(chunks), BypassReason.TOO_LARGE


def _is_json(content_type: str) -> bool:
    """Parsed as `request.content_type` and `.charset` would be, by the same cached function,
    without the copy of the parameters that those keep on each request while it is held."""
    media_type, params = parse_content_type(content_type)
    return media_type == "application/json" and params.get("charset") in _JSON_CHARSETS


def render(reply: UpstreamReply) -> web.Response:
    """A caller's own response from a batch call's reply."""
    if hdrs.SET_COOKIE in reply.headers:
        log.warning("set_cookie_dropped")
    headers = client_response_headers(reply.headers, also=_REPLY_DROPPED)
    return web.Response(status=reply.status, body=reply.body, headers=headers)
