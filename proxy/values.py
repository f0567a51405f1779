"""Parsers of raw option values (YAML scalars, environment strings, flags), one per option: each
returns the typed value or raises ValueError saying what was expected."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from yarl import URL

from .batching.endpoints import parse_table
from .batching.policy import Policy

MODES: Final = ("on", "off", "shadow")
LOG_FORMATS: Final = ("json", "console")
EVENT_LOOPS: Final = ("uvloop", "asyncio")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")


def _positive_int(v: Any) -> int:
    n = _int(v)
    if n <= 0:
        raise ValueError("expected a positive integer")
    return n


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise ValueError("expected an integer")
    try:
        return int(v)
    except ValueError:
        raise ValueError("expected an integer") from None


def _non_negative_int(v: Any) -> int:
    n = _int(v)
    if n < 0:
        raise ValueError("expected an integer >= 0")
    return n


def _port(v: Any) -> int:
    n = _int(v)
    if not 0 <= n <= 65535:
        raise ValueError("expected a port number 0-65535")
    return n


def _positive_float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("expected a positive number")
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError("expected a positive number") from None
    if not x > 0 or x == float("inf"):
        raise ValueError("expected a positive number")
    return x


def _mode(v: Any) -> str:
    # YAML 1.1 reads a bare `on`/`off` as a boolean.
    if isinstance(v, bool):
        return "on" if v else "off"
    return _choice(MODES)(v)


def _choice(options: Sequence[str]) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        s = str(v).lower()
        if s not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return s

    return parse


def _host(v: Any) -> str:
    if not isinstance(v, str) or not v or any(c in v for c in "/ "):
        raise ValueError("expected a host name or address")
    return v


def _upstream(v: Any) -> str:
    url = URL(str(v))
    if url.scheme not in ("http", "https") or not url.host or url.path not in ("", "/"):
        raise ValueError("expected an origin like http://127.0.0.1:3000")
    if url.query_string or url.fragment or url.user:
        raise ValueError("expected an origin like http://127.0.0.1:3000")
    return str(url.origin())


def _peers(v: Any) -> tuple[str, ...]:
    """Addresses ("10.0.0.7") and networks in CIDR form ("10.0.0.0/8"), normalised; a network
    with host bits set ("10.0.0.7/8") is refused rather than guessed at."""
    items = v.split(",") if isinstance(v, str) else v
    if not isinstance(items, (list, tuple)):
        raise ValueError("expected a list of IP addresses or CIDR networks")
    try:
        return tuple(_peer(str(i).strip()) for i in items if str(i).strip())
    except ValueError:
        raise ValueError("expected a list of IP addresses or CIDR networks") from None


def _peer(text: str) -> str:
    if "/" in text:
        return str(ipaddress.ip_network(text, strict=True))
    return str(ipaddress.ip_address(text))


PARSERS: Final[Mapping[str, Callable[[Any], Any]]] = {
    "upstream": _upstream,
    "host": _host,
    "port": _port,
    "admin_host": _host,
    "admin_port": _port,
    "mode": _mode,
    "policy": lambda v: Policy(_choice(tuple(Policy))(v)),
    "window_ms": _non_negative_int,
    "quiet_ms": _non_negative_int,
    "max_batch": _positive_int,
    "max_names": _positive_int,
    "max_wait_ms": _positive_int,
    "max_pending": _positive_int,
    "max_pending_per_key": _positive_int,
    "max_pending_bytes": _positive_int,
    "max_body_bytes": _positive_int,
    "connect_timeout": _positive_float,
    "read_timeout": _positive_float,
    "batch_timeout": _positive_float,
    "keepalive_timeout": _positive_float,
    "pool_size": _positive_int,
    "buffer_bytes": _non_negative_int,
    "buffer_budget_bytes": _non_negative_int,
    "websocket_heartbeat": _positive_float,
    "drain_seconds": _positive_float,
    "trusted_proxies": _peers,
    "log_format": _choice(LOG_FORMATS),
    "event_loop": _choice(EVENT_LOOPS),
    "log_level": _choice(LOG_LEVELS),
    "endpoints": parse_table,
}
