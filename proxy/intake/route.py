"""The batchable route: a request that fits its endpoint exactly (fit.py) is admitted to a batch,
or leads its idle key, and gets its own answer. When in any doubt, it passes through untouched."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Awaitable
from functools import partial
from typing import Final, Protocol

import structlog
from aiohttp import hdrs, web
from multidict import CIMultiDict

from ..batching.batcher import Batcher, BatcherClosed
from ..batching.batches import BatchKey, BatchTarget, Member, UpstreamReply, batch_key
from ..batching.endpoints import EndpointSpec, match_project, parse_body
from ..config import Config
from ..edge.answers import error_response
from ..edge.headers import client_response_headers
from ..edge.upstream import request_target
from ..errors import UpstreamError, UpstreamTimeout
from ..intake.limits import Limits
from ..ops.metrics import Metrics
from ..state import State
from .fit import BypassReason, precheck, read_capped
from .shadow import Shadow

log = structlog.get_logger(__name__)

# A batch call's reply is read whole and decoded, then rendered anew for each caller: its length
# and encoding describe that upstream message, and a cookie on it was set for no one caller.
_REPLY_DROPPED: Final = (hdrs.CONTENT_LENGTH, hdrs.CONTENT_ENCODING, hdrs.SET_COOKIE)

ReplyBatcher = Batcher[BatchKey, Member, UpstreamReply, BatchTarget]

# The request's storage key naming how it was answered, for the duration histogram's `route`:
# "batched" (from a batch call), "alone" (sent singly as its key's leader), else
# "passthrough" (including batchable requests that bypassed batching) or "websocket".
WAY: Final = web.RequestKey("dstack_coalescer.way", str)


class Passthrough(Protocol):
    """Sends a request upstream as it came; `prefix` is body the proxy has already read."""

    def __call__(
        self, request: web.Request, *, prefix: bytes = ...
    ) -> Awaitable[web.StreamResponse]: ...


class Intake:
    """The batchable route of one app. Requests that fit go to `batcher` (in shadow mode: are
    observed, then go through), the rest to `passthrough`; it closes `batcher` on shutdown.
    One that finds its key idle, when the policy would send it at once anyway, leads the key:
    `send_alone` passes it through unchanged as the key's flight (docs/design.md, Flush
    policy)."""

    def __init__(
        self,
        config: Config,
        batcher: ReplyBatcher,
        limits: Limits,
        metrics: Metrics,
        passthrough: Passthrough,
        state: State,
        *,
        send_alone: Passthrough | None = None,
    ) -> None:
        self._config = config
        self._batcher = batcher
        self._limits = limits
        self._metrics = metrics
        self._passthrough = passthrough
        self._send_alone = send_alone
        self._alone = metrics.bypasses.labels(BypassReason.ALONE.value)
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
        try:
            body, unread = await read_capped(request, self._config.max_body_bytes)
        except ConnectionError:  # the client left mid-body: nothing goes upstream
            self._metrics.disconnects.labels("batched").inc()
            log.debug("client_disconnected")
            return web.Response(status=400)
        parsed = parse_body(spec, body) if unread is None else None
        if parsed is None:
            return await self._bypass(request, unread or BypassReason.BODY, body)
        key = batch_key(spec, project, parsed, request.headers, self._secret)
        member = Member(parsed.names, 0 if spec.idempotent else next(self._serials))
        if self._shadow is not None:
            self._shadow.observe(key, member, len(body))
            return await self._passthrough(request, prefix=body)
        # A request that leads its key counts against the caps like any held request: past
        # them, it goes through the bounded pass-through path like every other request.
        if refused := self._limits.admit(key, len(body)):
            return await self._bypass(request, refused, body)
        follow_up = self._state.follow_ups.follows(request)
        try:
            if self._send_alone is not None and (
                land := self._batcher.lead(key, member, follow_up=follow_up is not None)
            ):
                self._alone.inc()
                request[WAY] = "alone"
                try:
                    return await self._send_alone(request, prefix=body)
                finally:
                    land()
            return await self._batch(request, key, member, spec, body, follow_up)
        finally:
            self._limits.release(key, len(body))

    async def aclose(self, deadline: float | None = None) -> None:
        """Flush every open batch now and wait for the flights (SIGTERM); callers still
        waiting at `deadline` (the running loop's time) are answered 504, as their upstream
        call may or may not run."""
        await self._batcher.aclose(
            deadline, UpstreamTimeout("the upstream did not answer before the proxy shut down")
        )
        if self._shadow is not None:
            await self._shadow.aclose(deadline)

    async def _batch(
        self,
        request: web.Request,
        key: BatchKey,
        member: Member,
        spec: EndpointSpec,
        body: bytes,
        follow_up: float | None,
    ) -> web.StreamResponse:
        request[WAY] = "batched"
        try:
            # The target is built only if this request opens a batch: joiners would hold one each.
            target = partial(self._target, request, spec)
            reply = await self._batcher.submit(key, member, target, follow_up=follow_up)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and self._state.cut_by_deadline(task):
                self._metrics.drain_cancelled.labels("batched").inc()  # answered 504 by entry
            else:  # the client left, with handler_cancellation on. Its names went upstream if
                # its batch was in the air, and go if it is queued, unless the drain drops it.
                self._metrics.disconnects.labels("batched").inc()
            raise
        except BatcherClosed:
            return await self._bypass(request, BypassReason.CLOSED, body)
        except UpstreamError as exc:
            return error_response(exc)
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
        request[WAY] = "passthrough"
        return await self._passthrough(request, prefix=body)


def render(reply: UpstreamReply) -> web.Response:
    """A caller's own response from a batch call's reply."""
    if hdrs.SET_COOKIE in reply.headers:
        log.warning("set_cookie_dropped")
    headers = client_response_headers(reply.headers, also=_REPLY_DROPPED)
    return web.Response(status=reply.status, body=reply.body, headers=headers)
