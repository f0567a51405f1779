"""The application factory: routes, resources made in cleanup contexts, and the shutdown drain.
`make_app` is the one seam for tests and `__main__` alike."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import aiohttp
import structlog
from aiohttp import web

from .calls import make_batch_session
from .config import Config
from .dispatching import Dispatcher
from .errors import ProxyError, UpstreamTimeout, error_response
from .forwarding import Forwarder, forward
from .keys import CONFIG_KEY, FORWARDER_KEY, MERGER_KEY, METRICS_KEY, SESSION_KEY, STATE_KEY
from .merging import Merger
from .metrics import Metrics
from .state import State
from .upstream import ALLOWED_METHODS, check_target
from .websocket import handle_websocket, is_websocket_upgrade

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Of drain_seconds, the last part is kept for writing the last answers and closing sockets;
# aiohttp's own handler wait (shutdown_timeout, spent twice) fits in it too.
SHUTDOWN_MARGIN: Final = 0.5


def make_app(
    config: Config,
    *,
    session: aiohttp.ClientSession | None = None,
    batch_session: aiohttp.ClientSession | None = None,
) -> web.Application:
    """The public proxy app. Given sessions (pass-through's, batch calls') are used as-is and
    not closed (tests)."""
    app = web.Application(middlewares=[_request_context])
    app[CONFIG_KEY] = config
    app[METRICS_KEY] = Metrics()
    app[STATE_KEY] = State()
    app.cleanup_ctx.append(_session_context(session))
    app.cleanup_ctx.append(_batching_context(batch_session))
    app.on_shutdown.append(_drain)
    app.router.add_route("*", "/{tail:.*}", handle_request)
    return app


async def handle_request(request: web.Request) -> web.StreamResponse:
    """Every request: batched if it fits a batchable endpoint exactly, else passed through."""
    if is_websocket_upgrade(request):
        return await handle_websocket(request)
    merger = request.app[MERGER_KEY]
    if (match := merger.match(request)) is not None:
        return await merger.handle(request, *match)
    return await forward(request)


def make_passthrough_session(config: Config) -> aiohttp.ClientSession:
    """Pass-through's session: bytes passed as sent, no cookie jar, every wait bounded.

    The connector has no cap of its own (forwarding.Forwarder counts the connections held);
    idle connections are closed below uvicorn's 5 s keep-alive, since reusing one the server
    has just closed fails at random with "server disconnected"."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=config.keepalive_timeout),
        # A jar would replay one user's cookies to the next.
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,  # HTTP(S)_PROXY in the environment must not reroute upstream calls
        timeout=aiohttp.ClientTimeout(
            total=None,
            connect=config.connect_timeout,
            sock_connect=config.connect_timeout,
            sock_read=config.read_timeout,
        ),
    )


def _session_context(
    given: aiohttp.ClientSession | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG_KEY]
        session = given or make_passthrough_session(config)
        app[SESSION_KEY] = session
        app[FORWARDER_KEY] = Forwarder(session, config, app[METRICS_KEY])
        yield
        if given is None:
            await session.close()

    return context


def _batching_context(
    given: aiohttp.ClientSession | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG_KEY]
        session = given or make_batch_session(config)
        dispatcher = Dispatcher(session, app[METRICS_KEY], config.batch_timeout)
        app[MERGER_KEY] = Merger(config, dispatcher, app[METRICS_KEY])
        yield
        if given is None:
            await session.close()

    return context


async def _drain(app: web.Application) -> None:
    """On shutdown, with ONE deadline for everything: readiness fails, every request in
    progress or still arriving is bounded by the deadline (then answered 504), open batches
    flush at once, WebSockets close with 1001; then wait for the handlers to finish."""
    state, config = app[STATE_KEY], app[CONFIG_KEY]
    loop = asyncio.get_running_loop()
    margin = min(SHUTDOWN_MARGIN, config.drain_seconds / 4)
    deadline = loop.time() + config.drain_seconds - margin
    state.drain(deadline)
    merger = app[MERGER_KEY]
    log.info(
        "draining",
        in_progress=state.in_progress,
        pending=merger.pending,
        websockets=len(state.websockets),
    )
    closing = [
        asyncio.ensure_future(ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"shutdown"))
        for ws in list(state.websockets)
    ]
    await merger.aclose(timeout=max(deadline - loop.time(), 0))
    if closing:
        await asyncio.wait(closing, timeout=max(deadline - loop.time(), 0))
    if not await state.wait_idle(max(deadline - loop.time(), 0) + margin / 2):
        log.warning("drain_incomplete", in_progress=state.in_progress)


@web.middleware
async def _request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind log context, refuse targets that could reach another host, bound every request by
    the drain deadline, count every answer."""
    structlog.contextvars.bind_contextvars(
        request_id=uuid.uuid4().hex[:16], method=request.method, path=request.path
    )
    metrics = request.app[METRICS_KEY]
    state = request.app[STATE_KEY]
    metrics.in_flight.inc()
    started = time.perf_counter()
    try:
        try:
            check_target(request)
        except ProxyError as exc:
            log.info("request_refused", reason=str(exc))
            headers = {"Allow": ", ".join(sorted(ALLOWED_METHODS))} if exc.status == 405 else None
            response: web.StreamResponse = error_response(exc, headers)
        else:
            response = await _bounded(request, handler, state)
        metrics.requests.labels(_route_class(request, response), str(response.status)).inc()
        return response
    finally:
        metrics.in_flight.dec()
        log.debug("request_done", duration_ms=round((time.perf_counter() - started) * 1000, 2))
        structlog.contextvars.clear_contextvars()


async def _bounded(request: web.Request, handler: Handler, state: State) -> web.StreamResponse:
    """Run the handler; if the drain deadline comes first, answer 504 (the upstream may still
    do the work). A handler that had started its answer has aborted the connection already."""
    bound = state.bound()
    try:
        async with bound:
            state.track(bound)
            try:
                return await handler(request)
            finally:
                state.untrack(bound)
    except TimeoutError:
        if not bound.expired():
            raise
        log.warning("answered_at_shutdown")
        return error_response(UpstreamTimeout("the proxy shut down before the upstream answered"))


def _route_class(request: web.Request, response: web.StreamResponse) -> str:
    if isinstance(response, web.WebSocketResponse):
        return "websocket"
    path = request.path
    if path.startswith("/api/"):
        return "api"
    if path.startswith("/proxy/"):
        return "services"
    return "static"
