"""The mergeable routes: decide whether a request fits its endpoint exactly, build its key,
submit it to the batcher, and render the caller's own answer. When in any doubt, pass through."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import secrets
from collections.abc import Callable
from typing import Final

import structlog
from aiohttp import hdrs, web

from .batcher import Batcher, BatcherClosed, ClosedBatch, Policy
from .batches import BatchKey, BatchTarget, Member, UpstreamReply
from .config import Config
from .dispatching import Dispatcher
from .endpoints import EndpointSpec, ParsedBody, match_project, parse_body
from .errors import UpstreamBusy
from .forwarding import forward, upstream_request
from .headers import client_response_headers, connection_tokens
from .keys import STATE_KEY
from .limits import Limits
from .metrics import Metrics
from .upstream import UpstreamError, UpstreamTimeout, error_response

log = structlog.get_logger(__name__)

# Headers besides the credential that the upstream reads and that can change its answer
# (shared/dstack-api.md §3): requests that differ in them never share a call.
VARYING_HEADERS: Final = ("X-API-Version",)
CREDENTIAL_HEADERS: Final = (hdrs.AUTHORIZATION, hdrs.COOKIE)
BODY_READ_TIMEOUT: Final = 10.0
_JSON_CHARSETS: Final = frozenset({None, "utf-8", "utf8"})
_PLAIN_CONNECTION: Final = frozenset({"keep-alive", "close"})
# A merged call's reply is read by the proxy and re-rendered per caller: these describe the
# upstream message or the merged call, never a caller's own response (PROXY-PITFALLS A15).
_REPLY_DROPPED: Final = (hdrs.CONTENT_LENGTH, hdrs.CONTENT_ENCODING, hdrs.SET_COOKIE)


class Merger:
    """Owns the batcher of one app, its admission caps and credential key; in shadow mode the
    batcher's flush only observes, and every request is forwarded singly."""

    def __init__(self, config: Config, dispatcher: Dispatcher, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self._specs = config.enabled_endpoints if config.mode != "off" else ()
        self._secret = secrets.token_bytes(32)  # per process: fingerprints never leave memory
        self._limits = Limits(
            config.max_pending, config.max_pending_per_key, config.max_pending_bytes
        )
        flush = dispatcher.flush if config.mode == "on" else self._observe
        # Shadow mode resolves every item to None: it only observes.
        self._batcher: Batcher[BatchKey, Member, UpstreamReply | None, BatchTarget] = Batcher(
            flush,
            window=config.window,
            max_size=config.max_batch,
            max_wait=config.max_wait,
            expire=self._expired,
            policy=config.policy if config.mode == "on" else Policy.WINDOW,
        )
        self._serials = itertools.count(1)  # distinct members where repeats are not harmless
        self._observers: set[asyncio.Task[None]] = set()  # shadow submissions under way
        metrics.pending.set_function(lambda: self._batcher.pending)
        metrics.keys.set_function(lambda: self._batcher.keys)

    def match(self, request: web.Request) -> tuple[EndpointSpec, str] | None:
        """The endpoint and normalised project if the request targets a mergeable path."""
        if request.method != hdrs.METH_POST:
            return None
        path = request.raw_path.partition("?")[0]
        for spec in self._specs:
            if (project := match_project(spec, path)) is not None:
                return spec, project
        return None

    async def handle(
        self, request: web.Request, spec: EndpointSpec, project: str
    ) -> web.StreamResponse:
        """Merge the request if it fits `spec` exactly; otherwise pass it through."""
        if reason := self._precheck(request):
            return await self._bypass(request, reason)
        body, unread = await _read_capped(request, self._config.max_body_bytes)
        parsed = parse_body(spec, body) if unread is None else None
        if parsed is None:
            return await self._bypass(request, unread or "body", body)
        key, target = self._key(request, spec, project, parsed)
        member = Member(parsed.names, 0 if spec.idempotent else next(self._serials))
        if self._config.mode == "shadow":
            self._observe_later(key, member, target, len(body))
            return await forward(request, prefix=body)
        return await self._coalesce(request, key, member, target, body)

    async def _coalesce(
        self, request: web.Request, key: BatchKey, item: Member, target: BatchTarget, body: bytes
    ) -> web.StreamResponse:
        if reason := self._limits.admit(key, len(body)):
            return await self._bypass(request, reason, body)
        try:
            reply = await self._batcher.submit(key, item, target)
        except asyncio.CancelledError:  # the client left, with handler_cancellation on
            self._metrics.disconnects.labels("batched").inc()  # its item still goes upstream
            raise
        except BatcherClosed:
            return await self._bypass(request, "closed", body)
        except UpstreamError as exc:
            return error_response(exc)
        finally:
            self._limits.release(key, len(body))
        if request.transport is None or request.transport.is_closing():
            self._metrics.disconnects.labels("batched").inc()  # left, yet its item went
        assert reply is not None  # only shadow mode resolves to None, and it never gets here
        return _render(reply)

    @property
    def pending(self) -> int:
        """Requests waiting in batches."""
        return self._batcher.pending

    async def aclose(self, timeout: float | None = None) -> None:
        """Flush every open batch now and wait for the flights (SIGTERM); callers still
        waiting after `timeout` are answered 504, as their upstream call may or may not run."""
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        await self._batcher.aclose(
            deadline, UpstreamTimeout("the upstream did not answer before the proxy shut down")
        )
        if self._observers:
            await asyncio.gather(*self._observers, return_exceptions=True)

    def _precheck(self, request: web.Request) -> str | None:
        headers = request.headers
        if request.app[STATE_KEY].draining:
            return "closed"
        if "?" in request.raw_path:
            return "query"
        if hdrs.CONTENT_TYPE in headers and (
            request.content_type != "application/json" or request.charset not in _JSON_CHARSETS
        ):
            return "content_type"
        if hdrs.CONTENT_ENCODING in headers:
            return "content_encoding"
        if (
            len(headers.getall(hdrs.AUTHORIZATION, ())) != 1
            or len(headers.getall(hdrs.COOKIE, ())) > 1
        ):
            return "credentials"
        if any(len(headers.getall(h, ())) > 1 for h in VARYING_HEADERS):
            return "headers"
        if connection_tokens(headers) - _PLAIN_CONNECTION:
            # It would strip a header (Authorization, X-API-Version) from the merged call
            # that the key was built with.
            return "headers"
        if (request.content_length or 0) > self._config.max_body_bytes:
            return "too_large"
        return None

    def _key(
        self, request: web.Request, spec: EndpointSpec, project: str, parsed: ParsedBody
    ) -> tuple[BatchKey, BatchTarget]:
        url, headers = upstream_request(request, rewritten=True)
        headers[hdrs.CONTENT_TYPE] = "application/json"
        headers[hdrs.ACCEPT_ENCODING] = "identity"
        key = BatchKey(
            endpoint=spec.name,
            project=project,
            principal=self._fingerprint(request),
            # None for an absent header: dstack skips the version check then, while an empty
            # value is a 400, so the two must never share a call.
            read_headers=tuple((h.lower(), request.headers.get(h)) for h in VARYING_HEADERS),
            shared_fields=parsed.shared_fields,
        )
        return key, BatchTarget(spec, url, headers)

    def _fingerprint(self, request: web.Request) -> str:
        mac = hmac.new(self._secret, digestmod=hashlib.sha256)
        for name in CREDENTIAL_HEADERS:
            mac.update(
                name.encode()
                + b"\0"
                + request.headers.get(name, "").encode("utf-8", "surrogateescape")
                + b"\0"
            )
        return mac.hexdigest()

    async def _bypass(
        self, request: web.Request, reason: str, body: bytes = b""
    ) -> web.StreamResponse:
        self._metrics.bypasses.labels(reason).inc()
        return await forward(request, prefix=body)

    def _observe_later(self, key: BatchKey, member: Member, target: BatchTarget, size: int) -> None:
        if self._limits.admit(key, size):  # at a cap: the request still goes, unobserved
            return
        task = asyncio.get_running_loop().create_task(self._observe_one(key, member, target, size))
        self._observers.add(task)
        task.add_done_callback(self._observers.discard)

    async def _observe_one(
        self, key: BatchKey, member: Member, target: BatchTarget, size: int
    ) -> None:
        try:
            with contextlib.suppress(BatcherClosed):  # shutting down: nothing left to observe
                await self._batcher.submit(key, member, target)
        finally:
            self._limits.release(key, size)

    async def _observe(
        self,
        batch: ClosedBatch[BatchKey, Member, BatchTarget],
        resolve: Callable[[Member, None], None],
    ) -> None:
        """Shadow mode's flush: count and log the batch that would have gone, send nothing."""
        spec = batch.context.spec
        self._metrics.shadow_batches.labels(spec.name).inc()
        log.info(
            "batch_shadowed",
            endpoint=spec.name,
            project=batch.key.project,
            size=batch.waiters,
            distinct=len(batch.members),
            reason=batch.reason.value,
        )
        for member in batch.members:
            resolve(member, None)

    def _expired(self, batch: ClosedBatch[BatchKey, Member, BatchTarget]) -> UpstreamBusy:
        self._metrics.expired.labels(batch.key.endpoint).inc(batch.waiters)
        return UpstreamBusy("an earlier call for the same batch key is still running; not sent")


async def _read_capped(request: web.Request, cap: int) -> tuple[bytes, str | None]:
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
        return b"".join(chunks), "slow_body"
    return b"".join(chunks), "too_large"


def _render(reply: UpstreamReply) -> web.Response:
    if hdrs.SET_COOKIE in reply.headers:
        log.warning("set_cookie_dropped")
    headers = client_response_headers(reply.headers, also=_REPLY_DROPPED)
    return web.Response(status=reply.status, body=reply.body, headers=headers)
