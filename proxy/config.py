"""Configuration: every option with its default, parser and check; read from a YAML file, the
environment (`COALESCER_*`) and command-line flags, in rising precedence.

A bad value fails at start-up with one line naming the option, where it came from, and the value.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from yarl import URL

from .endpoints import DEFAULT_ENDPOINTS, EndpointSpec, parse_table
from .policy import Policy

ENV_PREFIX: Final = "COALESCER_"
MODES: Final = ("on", "off", "shadow")
LOG_FORMATS: Final = ("json", "console")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
MAX_NAMES: Final = 200  # measured: docs/measurements.md, Cost of a list


class ConfigError(ValueError):
    """A configuration value that cannot be used; `str()` is the one line to show."""


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the proxy can be told. Field metadata holds each option's help text."""

    upstream: str = field(
        default="http://127.0.0.1:3000", metadata={"help": "dstack server origin"}
    )
    host: str = field(default="0.0.0.0", metadata={"help": "public listen address"})
    port: int = field(default=8080, metadata={"help": "public listen port"})
    admin_host: str = field(default="127.0.0.1", metadata={"help": "admin listen address"})
    admin_port: int = field(default=9090, metadata={"help": "admin listen port"})
    mode: str = field(default="on", metadata={"help": "batching: on, off or shadow"})
    policy: Policy = field(
        default=Policy.ADAPTIVE, metadata={"help": "when a batch leaves: window, idle, adaptive"}
    )
    window_ms: int = field(default=20, metadata={"help": "batch window from a key's first request"})
    max_batch: int = field(default=500, metadata={"help": "requests per batch at most"})
    max_names: int = field(default=MAX_NAMES, metadata={"help": "names per upstream call at most"})
    max_wait_ms: int = field(
        default=30000, metadata={"help": "bound on a request's wait to be sent"}
    )
    max_pending: int = field(default=10000, metadata={"help": "pending requests before bypass"})
    max_pending_per_key: int = field(default=1000, metadata={"help": "pending requests per key"})
    max_pending_bytes: int = field(default=16 << 20, metadata={"help": "buffered body bytes"})
    max_body_bytes: int = field(default=64 << 10, metadata={"help": "largest batchable body"})
    connect_timeout: float = field(default=5.0, metadata={"help": "upstream connect, seconds"})
    read_timeout: float = field(default=300.0, metadata={"help": "upstream idle read, seconds"})
    batch_timeout: float = field(default=30.0, metadata={"help": "a batch call's answer, seconds"})
    keepalive_timeout: float = field(
        default=4.0, metadata={"help": "idle upstream keep-alive; below uvicorn's 5 s"}
    )
    pool_size: int = field(
        default=100, metadata={"help": "pass-through requests waiting on the upstream at once"}
    )
    buffer_bytes: int = field(
        default=16 << 20, metadata={"help": "largest response read whole before answering"}
    )
    buffer_budget_bytes: int = field(
        default=128 << 20, metadata={"help": "memory for responses read whole, in all"}
    )
    websocket_heartbeat: float = field(
        default=30.0, metadata={"help": "WebSocket ping interval on both legs, seconds"}
    )
    drain_seconds: float = field(default=8.0, metadata={"help": "shutdown drain budget"})
    trusted_proxies: tuple[str, ...] = field(
        default=(), metadata={"help": "peers whose X-Forwarded-* are believed"}
    )
    log_format: str = field(default="json", metadata={"help": "json or console"})
    log_level: str = field(default="info", metadata={"help": "debug, info, warning, error"})
    endpoints: tuple[EndpointSpec, ...] = field(
        default=DEFAULT_ENDPOINTS, metadata={"help": "batchable endpoint table (file only)"}
    )

    @property
    def window(self) -> float:
        return self.window_ms / 1000

    @property
    def max_wait(self) -> float:
        return self.max_wait_ms / 1000

    @property
    def enabled_endpoints(self) -> tuple[EndpointSpec, ...]:
        return tuple(e for e in self.endpoints if e.enabled)


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


def _addresses(v: Any) -> tuple[str, ...]:
    items = v.split(",") if isinstance(v, str) else v
    if not isinstance(items, (list, tuple)):
        raise ValueError("expected a list of IP addresses")
    try:
        return tuple(str(ipaddress.ip_address(str(i).strip())) for i in items if str(i).strip())
    except ValueError:
        raise ValueError("expected a list of IP addresses") from None


_PARSERS: Final[Mapping[str, Callable[[Any], Any]]] = {
    "upstream": _upstream,
    "host": _host,
    "port": _port,
    "admin_host": _host,
    "admin_port": _port,
    "mode": _mode,
    "policy": lambda v: Policy(_choice(tuple(Policy))(v)),
    "window_ms": _non_negative_int,
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
    "trusted_proxies": _addresses,
    "log_format": _choice(LOG_FORMATS),
    "log_level": _choice(LOG_LEVELS),
    "endpoints": parse_table,
}
OPTIONS: Final = tuple(f.name for f in dataclasses.fields(Config))
FILE_ONLY: Final = frozenset({"endpoints"})


def build_config(values: Mapping[str, tuple[Any, str]]) -> Config:
    """A Config from `{option: (raw value, source)}`; the source names it in errors."""
    parsed: dict[str, Any] = {}
    for name, (raw, source) in values.items():
        if name not in _PARSERS:
            raise ConfigError(f"unknown option {name!r} in {source}")
        try:
            parsed[name] = _PARSERS[name](raw)
        except ValueError as exc:
            raise ConfigError(f"invalid {name} from {source}: {raw!r} ({exc})") from None
    config = Config(**parsed)
    if config.max_wait_ms < config.window_ms:

        def where(name: str) -> str:
            return values[name][1] if name in values else "default"

        raise ConfigError(
            f"invalid max_wait_ms from {where('max_wait_ms')}: {config.max_wait_ms!r} (must be >= "
            f"window_ms {config.window_ms!r} from {where('window_ms')})"
        )
    return config


def read_file(path: str | Path) -> dict[str, tuple[Any, str]]:
    """Options from a YAML file (a mapping of option names)."""
    source = f"config file {path}"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of options")
    return {str(k): (v, source) for k, v in data.items()}


def read_env(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """Options from `COALESCER_<OPTION>` variables."""
    out = {}
    for name in OPTIONS:
        var = ENV_PREFIX + name.upper()
        if name not in FILE_ONLY and var in environ:
            out[name] = (environ[var], f"environment {var}")
    return out


def argument_parser() -> argparse.ArgumentParser:
    """Flags for every option but the endpoint table; unset flags stay None."""
    p = argparse.ArgumentParser(
        prog="dstack-coalescer",
        description="A request-coalescing reverse proxy for the dstack server.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="YAML config file (env COALESCER_CONFIG)")
    for f in dataclasses.fields(Config):
        if f.name not in FILE_ONLY:
            p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, help=f.metadata["help"])
    return p


def load_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Config:
    """The effective Config: flags > environment > file > built-in defaults."""
    args = vars(argument_parser().parse_args(argv))
    path = args.pop("config", None) or environ.get(ENV_PREFIX + "CONFIG")
    values = read_file(path) if path else {}
    values.update(read_env(environ))
    values.update({k: (v, "flag --" + k.replace("_", "-")) for k, v in args.items()})
    return build_config(values)
