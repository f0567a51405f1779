"""Running the public and admin listeners until SIGTERM/SIGINT, then draining within budget."""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from .admin import make_admin_app
from .app import make_app
from .config import Config
from .keys import STATE_KEY

log = structlog.get_logger(__name__)


async def serve(config: Config, *, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (by SIGTERM/SIGINT when not given), then shut down in order:
    stop accepting, flush open batches, let in-flight requests finish within `drain_seconds`."""
    stop = stop or _stop_on_signals()
    app = make_app(config)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        # aiohttp waits this long for handlers, cancels, then waits as long again: with the
        # half that on_shutdown may spend on batches, the whole drain stays in drain_seconds.
        shutdown_timeout=config.drain_seconds / 4,
        # Explicit, as the default has changed across releases (PROXY-PITFALLS A9): a client
        # that leaves never cancels a handler, so an accepted request is always executed.
        handler_cancellation=False,
    )
    admin = web.AppRunner(
        make_admin_app(app), handle_signals=False, access_log=None, shutdown_timeout=1.0
    )
    await runner.setup()
    await admin.setup()
    try:
        await web.TCPSite(runner, config.host, config.port).start()
        await web.TCPSite(admin, config.admin_host, config.admin_port).start()
        log.info(
            "listening",
            public=f"{config.host}:{config.port}",
            admin=f"{config.admin_host}:{config.admin_port}",
            upstream=config.upstream,
            mode=config.mode,
        )
        await stop.wait()
        log.info("shutdown_started", drain_seconds=config.drain_seconds)
        app[STATE_KEY].draining = True
    finally:
        await runner.cleanup()
        await admin.cleanup()
        log.info("shutdown_complete")


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
