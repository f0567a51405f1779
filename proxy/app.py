"""The application factory: routes, resources made in cleanup contexts, and the shutdown drain.
`make_app` is the one seam for tests and `__main__` alike."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from time import perf_counter
from typing import Any, Final

import aiohttp
import structlog
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from .batching.dispatching import Dispatcher
from .config import Config
from .edge.answers import error_response
from .edge.forwarding import Forwarder, keep_untyped
from .edge.framing import bad_framing
from .edge.upstream import (
    ALLOWED_METHODS,
    check_target,
    make_batch_session,
    make_passthrough_session,
)
from .edge.websocket import SHUTDOWN, handle_websocket, is_websocket_upgrade
from .errors import ProxyError, UpstreamTimeout
from .intake.build import batcher_for, limits_for
from .intake.calls import HttpSend
from .intake.route import WAY, Intake, ReplyBatcher
from .keys import CONFIG_KEY, FORWARDER_KEY, INTAKE_KEY, METRICS_KEY, SESSION_KEY, STATE_KEY
from .ops.logs import REQUEST, new_request_serial
from .ops.metrics import Metrics
from .state import State

log = structlog.get_logger(__name__)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SHUTDOWN_MARGIN: Final = 0.5  # seconds of drain_seconds at most, kept by drain_margin


def drain_margin(drain_seconds: float) -> float:
    """Of `drain_seconds`, the last part kept for writing the last answers and closing sockets:
    SHUTDOWN_MARGIN, or a quarter of a shorter drain. The drain's deadline comes before it."""
    return min(SHUTDOWN_MARGIN, drain_seconds / 4)


def handler_wait(drain_seconds: float) -> float:
    """aiohttp's own wait for the handlers left after the drain (its `shutdown_timeout`), which
    it spends twice: before cancelling them and after. Both fit in the drain's margin."""
    return drain_margin(drain_seconds) / 4


def make_app(
    config: Config,
    *,
    session: aiohttp.ClientSession | None = None,
    batch_session: aiohttp.ClientSession | None = None,
) -> web.Application:
    """The public proxy app. Given sessions (pass-through's, batch calls') are used as-is and
    not closed (tests)."""
    metrics, state = Metrics(), State()
    metrics.in_flight.set_function(lambda: state.in_progress)
    app = web.Application()
    app[CONFIG_KEY] = config
    app[METRICS_KEY] = metrics
    app[STATE_KEY] = state
    app.cleanup_ctx.append(_upstream_context(session, batch_session))
    app.on_shutdown.append(_drain)
    app.on_response_prepare.append(keep_untyped)
    app.router.register_resource(_EveryTarget(_entry(metrics, state)))
    return app


def route(request: web.Request) -> Awaitable[web.StreamResponse]:
    """Where a request goes: batched if it fits a batchable endpoint exactly, else passed
    through. Not a coroutine itself: the caller awaits the handler's own, so a request held for
    long keeps one frame less (thousands may be held)."""
    app = request.app
    if is_websocket_upgrade(request):
        state = app[STATE_KEY]
        return handle_websocket(
            request, app[SESSION_KEY], app[CONFIG_KEY], state.websockets, lambda: state.draining
        )
    intake = app[INTAKE_KEY]
    if (match := intake.match(request)) is not None:
        return intake.handle(request, *match)
    return app[FORWARDER_KEY].forward(request)


def _upstream_context(
    given: aiohttp.ClientSession | None, given_batch: aiohttp.ClientSession | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Everything that talks to the upstream, made and closed together: pass-through's session
    and forwarder, and the batchable route (intake) with the batch calls' own session, so they
    never queue behind pass-through. Given sessions are used as they are and never closed."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        config, metrics, state = app[CONFIG_KEY], app[METRICS_KEY], app[STATE_KEY]
        async with contextlib.AsyncExitStack() as made:
            session = given or _closed_after(made, make_passthrough_session(config))
            batch_session = given_batch or _closed_after(made, make_batch_session(config))
            forwarder = Forwarder(session, config, metrics)
            dispatcher = Dispatcher(
                HttpSend(batch_session, metrics), metrics, max_names=config.max_names
            )
            batcher: ReplyBatcher = batcher_for(config, dispatcher.flush, dispatcher.expire)
            metrics.keys.set_function(lambda: batcher.keys)
            # A request sent alone (its key idle) goes as it came, on the batch calls' session.
            alone = Forwarder(batch_session, config, metrics, kind="alone", pooled=False)
            app[SESSION_KEY], app[FORWARDER_KEY] = session, forwarder
            app[INTAKE_KEY] = Intake(
                config,
                batcher,
                limits_for(config),
                metrics,
                forwarder.forward,
                state,
                send_alone=alone.forward,
            )
            yield

    return context


def _closed_after(
    stack: contextlib.AsyncExitStack, session: aiohttp.ClientSession
) -> aiohttp.ClientSession:
    """`session`, to be closed when `stack` closes (a session the app made itself)."""
    stack.push_async_callback(session.close)
    return session


async def _drain(app: web.Application) -> None:
    """On shutdown, with ONE deadline for everything: readiness fails, every request in
    progress or still arriving is bounded by the deadline (then answered 504), open batches
    flush at once, WebSockets close with 1001; then wait for the handlers to finish."""
    state, config = app[STATE_KEY], app[CONFIG_KEY]
    loop = asyncio.get_running_loop()
    margin = drain_margin(config.drain_seconds)
    deadline = loop.time() + config.drain_seconds - margin
    state.drain(deadline)
    intake = app[INTAKE_KEY]
    log.info(
        "draining",
        in_progress=state.in_progress,
        pending=intake.pending,
        websockets=len(state.websockets),
    )
    closing = [
        asyncio.ensure_future(ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=SHUTDOWN))
        for ws in list(state.websockets)
    ]
    await intake.aclose(deadline)
    if closing:
        await asyncio.wait(closing, timeout=max(deadline - loop.time(), 0))
    # The handlers cut at the deadline write their 504s within the first half of the margin.
    if not await state.wait_idle(max(deadline, loop.time()) + margin / 2):
        log.warning("drain_incomplete", in_progress=state.in_progress)


class _EveryTarget(web.AbstractResource):
    """The app's one resource: every request goes to `handler`, whatever its target. A route
    pattern would leave targets that are not paths (`*`, `host:port`) to aiohttp's plain-text
    404, and a middleware to see them costs several microseconds per request
    (docs/measurements.md); the handler refuses such targets itself."""

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self._route = web.ResourceRoute(hdrs.METH_ANY, handler, self, expect_handler=_expect)

    async def resolve(self, request: web.Request) -> tuple[web.UrlMappingMatchInfo, set[str]]:
        return web.UrlMappingMatchInfo({}, self._route), set()

    @property
    def canonical(self) -> str:
        return "/"  # indexed at the root, which every target's lookup reaches last

    def raw_match(self, path: str) -> bool:
        return True

    def url_for(self, **kwargs: str) -> URL:
        return URL("/")

    def add_prefix(self, prefix: str) -> None:
        raise RuntimeError("the proxy app is never a sub-application")

    def get_info(self) -> Any:  # aiohttp types it with a private TypedDict
        return {"path": "/"}

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[web.AbstractRoute]:
        return iter((self._route,))


async def _expect(request: web.Request) -> None:
    """What uvicorn does with `Expect` (HTTP/1.1): `100-continue` gets a 100 Continue, and an
    expectation it does not know is ignored, as RFC 9110 lets a server do. aiohttp's default
    answers that 417, so a request dstack would run never reached it. `Expect` itself is
    never sent upstream (edge/headers.py)."""
    if request.version == aiohttp.HttpVersion11 and (
        request.headers.get(hdrs.EXPECT, "").lower() == "100-continue"
    ):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer itself has not begun


def _entry(metrics: Metrics, state: State) -> Handler:
    """What every request goes through, even one whose target no route could take (`*`,
    `host:port`): refuse targets that could reach another host, bound it by the drain
    deadline, name it in log events, count its answer; then `route` it. Built once per app
    with what it needs at hand, and kept cheap: it runs for every request
    (docs/measurements.md)."""
    count = metrics.requests.inc
    arrived, answered = state.follow_ups.arrived, state.follow_ups.answered
    took = metrics.duration.labels

    async def entry(request: web.Request) -> web.StreamResponse:
        began = perf_counter()
        token = REQUEST.set((new_request_serial(), request.method, request.raw_path))
        arrived(request)
        task = state.enter()
        try:
            try:
                check_target(request)
                response = await route(request)
            except ProxyError as exc:
                log.info("request_refused", reason=str(exc))
                allow = {"Allow": ", ".join(sorted(ALLOWED_METHODS))} if exc.status == 405 else None
                response = error_response(exc, allow)
            except HttpProcessingError as exc:  # its body broke its framing (edge/framing.py)
                response = bad_framing(request, exc)
            except asyncio.CancelledError:
                if not state.expired(task):
                    raise
                # A handler that had started its answer has closed the connection itself.
                log.warning("answered_at_shutdown")
                response = error_response(
                    UpstreamTimeout("the proxy shut down before the upstream answered")
                )
            route_class = _route_class(request, response)
            count(route_class, str(response.status))
            way = "websocket" if route_class == "websocket" else request.get(WAY, "passthrough")
            took(way).observe(perf_counter() - began)
            return response
        finally:
            state.leave(task)
            answered(request)
            REQUEST.reset(token)

    return entry


def _route_class(request: web.Request, response: web.StreamResponse) -> str:
    if isinstance(response, web.WebSocketResponse):
        return "websocket"
    path = request.path
    if path.startswith("/api/"):
        return "api"
    if path.startswith("/proxy/"):
        return "services"
    return "static"
