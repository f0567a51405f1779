"""structlog configuration (JSON or console), with credentials redacted from every event, and
the request each event belongs to."""

from __future__ import annotations

import itertools
import logging
import secrets
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, Final

import orjson
import structlog

_SECRET_KEYS: Final = frozenset(
    {"authorization", "cookie", "set-cookie", "proxy-authorization", "token", "password"}
)


# (serial, method, path) of the request being handled. One ContextVar set and reset per
# request: structlog's bind/clear_contextvars cost more than the rest of the logging together.
# The id is written out only when an event is logged: most requests log nothing.
REQUEST: Final[ContextVar[tuple[int, str, str] | None]] = ContextVar("request", default=None)
PROCESS_ID: Final = secrets.token_hex(4)  # unique per process; serials make ids unique in it
new_request_serial: Final = itertools.count(1).__next__


def request_id(serial: int) -> str:
    """A request id unique across processes and restarts (not a secret: just cheap)."""
    return f"{PROCESS_ID}{serial:08x}"


def add_request(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Name the request an event belongs to, if it belongs to one."""
    if (request := REQUEST.get()) is not None:
        event.setdefault("request_id", request_id(request[0]))
        event.setdefault("method", request[1])
        event.setdefault("path", loggable(request[2]))
    return event


def loggable(target: str) -> str:
    """A request target or URL as logs may show it: no query or fragment (`?api_key=...`) and no
    userinfo (`http://user:pass@host/`), which can carry credentials."""
    target = target.partition("?")[0].partition("#")[0]
    scheme, sep, rest = target.rpartition("://")
    authority, slash, path = (rest if sep else target).partition("/")
    if "@" in authority and (sep or not target.startswith("/")):
        authority = authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{path}"


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Never let a credential reach a log line, whatever a caller passes."""
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "[redacted]"
    return event


def configure_logging(fmt: str = "json", level: str = "info") -> None:
    """Configure structlog (and stdlib logging, for aiohttp's own messages) once. The filter that
    keeps request bytes out of aiohttp's server messages is installed by `serving.serve`."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    json = fmt == "json"
    renderer = (
        # orjson renders several times faster than the standard library's json.
        structlog.processors.JSONRenderer(serializer=orjson.dumps)
        if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_request,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=(
            structlog.BytesLoggerFactory(sys.stderr.buffer)
            if json
            else structlog.PrintLoggerFactory(sys.stderr)
        ),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(
        level=max(numeric, logging.WARNING),
        stream=sys.stderr,
        format="%(levelname)s %(name)s %(message)s",
    )
