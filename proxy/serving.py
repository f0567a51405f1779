"""Running the public and admin listeners until SIGTERM/SIGINT, then draining within budget."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .admin import make_admin_app
from .app import handler_wait, make_app
from .config import Config
from .edge.framing import PublicRunner
from .ops.logs import loggable

log = structlog.get_logger(__name__)

GC_THRESHOLD: Final = 20_000  # allocations between young-generation collections (default 700)

# How the public listener's aiohttp server reads and runs requests (tests serve the app with the
# same options, so they see what ships):
# - a client that leaves never cancels a handler, so an accepted request is always executed
#   (explicit: the default has changed across aiohttp releases);
# - a request body goes upstream as the client sent it, never decoded from its
#   `Content-Encoding`: dstack reads the bytes and ignores that header, so a decoded body could
#   get another answer, and a small compressed one would grow in memory (docs/design.md,
#   Request path).
SERVER_OPTIONS: Final[Mapping[str, Any]] = MappingProxyType(
    {"handler_cancellation": False, "auto_decompress": False}
)


async def serve(config: Config, *, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (by SIGTERM/SIGINT when not given), then shut down within
    `drain_seconds` in total: stop accepting, then the app's drain (app.py) answers every
    request in progress by one deadline, and only then does aiohttp close what is left."""
    stop = stop or _stop_on_signals()
    logging.getLogger("aiohttp.server").addFilter(_PARSE_ERRORS_WITHOUT_BYTES)
    app = make_app(config)
    runner = PublicRunner(
        app,
        SERVER_OPTIONS,
        handle_signals=False,
        access_log=None,
        # The drain has already waited for the handlers until its deadline, so this only
        # bounds what is left, within the margin the drain keeps.
        shutdown_timeout=handler_wait(config.drain_seconds),
    )
    admin = web.AppRunner(
        make_admin_app(app), handle_signals=False, access_log=None, shutdown_timeout=0.1
    )
    await runner.setup()
    await admin.setup()
    _tune_gc()
    try:
        await web.TCPSite(runner, config.host, config.port).start()
        await web.TCPSite(admin, config.admin_host, config.admin_port).start()
        log.info(
            "listening",
            public=f"{config.host}:{config.port}",
            admin=f"{config.admin_host}:{config.admin_port}",
            upstream=loggable(config.upstream),
            mode=config.mode,
        )
        await stop.wait()
        log.info("shutdown_started", drain_seconds=config.drain_seconds)
    finally:
        await runner.cleanup()
        await admin.cleanup()
        log.info("shutdown_complete")


class _ParseErrorsWithoutBytes(logging.Filter):
    """aiohttp logs a malformed request with its parser's message, which quotes the offending
    bytes, a credential among them: keep the kind of error, drop the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = f"{record.msg}: {type(exc).__name__} {exc.code}"
            record.exc_info = record.exc_text = None
        return True


_PARSE_ERRORS_WITHOUT_BYTES: Final = _ParseErrorsWithoutBytes()  # added once, however often served


def _tune_gc() -> None:
    """Collect garbage cycles less often, and never scan what start-up made (it lives as long
    as the process). With the defaults, collection took about a tenth of the CPU time of
    small pass-through requests (docs/measurements.md); each request frees almost everything
    it makes by reference counting, so cycles still get collected, just in larger batches."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
