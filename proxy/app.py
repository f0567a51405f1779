"""The application factory: routes, resources made in cleanup contexts, and shutdown order.
`make_app` is the one seam for tests and `__main__` alike."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import aiohttp
import structlog
from aiohttp import hdrs, web

from .batcher import Batcher
from .calls import HttpSend, make_batch_session
from .config import Config
from .dispatching import Dispatcher
from .forwarding import forward
from .intake import Intake, ReplyBatcher
from .keys import CONFIG_KEY, INTAKE_KEY, METRICS_KEY, SESSION_KEY, STATE_KEY
from .limits import Limits
from .metrics import Metrics
from .state import State
from .upstream import BadRequestTarget, error_response
from .websocket import handle_websocket, is_websocket_upgrade

log = structlog.get_logger(__name__)

# CONNECT and TRACE are refused (PROXY-PITFALLS A13); everything else dstack may serve passes.
ALLOWED_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(config: Config, *, session: aiohttp.ClientSession | None = None) -> web.Application:
    """The public proxy app. A given `session` is used as-is and not closed (tests)."""
    app = web.Application(middlewares=[_request_context])
    app[CONFIG_KEY] = config
    app[METRICS_KEY] = Metrics()
    app[STATE_KEY] = State()
    app.cleanup_ctx.append(_session_context(session))
    app.cleanup_ctx.append(_intake_context(session))
    app.on_shutdown.append(_drain)
    app.router.add_route("*", "/{tail:.*}", handle_request)
    return app


async def handle_request(request: web.Request) -> web.StreamResponse:
    """Every request: batched if it fits a batchable endpoint exactly, else passed through."""
    if is_websocket_upgrade(request):
        return await handle_websocket(request)
    intake = request.app[INTAKE_KEY]
    if (match := intake.match(request)) is not None:
        return await intake.handle(request, *match)
    return await forward(request)


def make_session(config: Config) -> aiohttp.ClientSession:
    """The one upstream session: bounded pool, no cookie jar, bytes passed through as sent."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=config.pool_size,
            # Below uvicorn's 5 s keep-alive, else a reused socket the server just closed gives
            # random "server disconnected" errors (PROXY-PITFALLS A10).
            keepalive_timeout=config.keepalive_timeout,
        ),
        # The default jar would replay one user's cookies to the next (litellm PR #36149).
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout, sock_read=config.read_timeout
        ),
    )


def _session_context(
    given: aiohttp.ClientSession | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        session = given or make_session(app[CONFIG_KEY])
        app[SESSION_KEY] = session
        yield
        if given is None:
            await session.close()

    return context


def _intake_context(
    given: aiohttp.ClientSession | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        config, metrics = app[CONFIG_KEY], app[METRICS_KEY]
        # Batch calls get a session of their own, so they never queue behind pass-through.
        session = given or make_batch_session(config)
        dispatcher = Dispatcher(HttpSend(session, metrics), metrics, max_names=config.max_names)
        batcher: ReplyBatcher = Batcher(
            dispatcher.flush,
            window=config.window,
            max_size=config.max_batch,
            max_wait=config.max_wait,
            expire=dispatcher.expire,
            policy=config.policy,
        )
        metrics.keys.set_function(lambda: batcher.keys)
        limits = Limits(config.max_pending, config.max_pending_per_key, config.max_pending_bytes)
        app[INTAKE_KEY] = Intake(config, batcher, limits, metrics, forward, app[STATE_KEY])
        yield
        if given is None:
            await session.close()

    return context


async def _drain(app: web.Application) -> None:
    """On shutdown: readiness fails, open batches flush now, websockets close (PITFALLS A17)."""
    app[STATE_KEY].draining = True
    intake, budget = app[INTAKE_KEY], app[CONFIG_KEY].drain_seconds / 2
    log.info("draining", pending=intake.pending, websockets=len(app[STATE_KEY].websockets))
    # Half the drain budget for open batches and websockets, side by side; the rest is
    # aiohttp's, for the handlers (serving.py).
    closing = [
        asyncio.ensure_future(ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"shutdown"))
        for ws in list(app[STATE_KEY].websockets)
    ]
    await intake.aclose(timeout=budget)
    if closing:
        await asyncio.wait(closing, timeout=budget)


@web.middleware
async def _request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind log context, refuse targets that could reach another host, count every answer."""
    request_id = uuid.uuid4().hex[:16]
    structlog.contextvars.bind_contextvars(
        request_id=request_id, method=request.method, path=request.path
    )
    metrics = request.app[METRICS_KEY]
    route = _route_class(request)
    metrics.in_flight.inc()
    started = time.perf_counter()
    try:
        if reason := _bad_target(request):
            log.info("request_refused", reason=reason)
            response: web.StreamResponse = error_response(BadRequestTarget(reason))
            if request.method not in ALLOWED_METHODS:
                response.set_status(405)
        else:
            response = await handler(request)
        metrics.requests.labels(route, str(response.status)).inc()
        return response
    finally:
        metrics.in_flight.dec()
        log.debug("request_done", duration_ms=round((time.perf_counter() - started) * 1000, 2))
        structlog.contextvars.clear_contextvars()


def _bad_target(request: web.Request) -> str | None:
    """Absolute- and authority-form targets, `*`, `//`-paths and backslashes are refused: the
    upstream comes from configuration only (PROXY-PITFALLS A14)."""
    raw = request.raw_path
    if request.method not in ALLOWED_METHODS:
        return f"method {request.method} not allowed"
    if not raw.startswith("/") or raw.startswith("//"):
        return "request target must be a path"
    if "\\" in raw:
        return "backslash in request target"
    return None


def _route_class(request: web.Request) -> str:
    path = request.path
    if request.headers.get(hdrs.UPGRADE, "").lower() == "websocket":
        return "websocket"
    if path.startswith("/api/"):
        return "api"
    if path.startswith("/proxy/"):
        return "services"
    return "static"
