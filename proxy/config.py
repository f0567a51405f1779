"""Configuration: every option with its default and help, read from a YAML file, the
environment (`COALESCER_*`) and command-line flags, in rising precedence.

A bad value fails at start-up with one line naming the option, where it came from, and the value;
each option's parser and check is in `values.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from yarl import URL

from .batching.endpoints import DEFAULT_ENDPOINTS, EndpointSpec
from .batching.policy import Policy
from .values import PARSERS

ENV_PREFIX: Final = "COALESCER_"
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
        default=Policy.QUIET,
        metadata={"help": "when a batch leaves: quiet, window, idle, adaptive"},
    )
    window_ms: int = field(default=20, metadata={"help": "batch window from a key's first request"})
    quiet_ms: int = field(
        default=5, metadata={"help": "pause in arrivals that ends a batch (policy quiet)"}
    )
    max_batch: int = field(default=500, metadata={"help": "requests per batch at most"})
    max_names: int = field(default=MAX_NAMES, metadata={"help": "names per upstream call at most"})
    max_wait_ms: int = field(
        default=35000, metadata={"help": "bound on a request's wait to be sent"}
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
        default=(),
        metadata={"help": "peers (addresses or CIDR networks) whose X-Forwarded-* are believed"},
    )
    log_format: str = field(default="json", metadata={"help": "json or console"})
    event_loop: str = field(default="uvloop", metadata={"help": "uvloop or asyncio"})
    log_level: str = field(default="info", metadata={"help": "debug, info, warning, error"})
    endpoints: tuple[EndpointSpec, ...] = field(
        default=DEFAULT_ENDPOINTS, metadata={"help": "batchable endpoint table (file only)"}
    )

    @property
    def window(self) -> float:
        return self.window_ms / 1000

    @property
    def quiet(self) -> float:
        return self.quiet_ms / 1000

    @property
    def max_wait(self) -> float:
        return self.max_wait_ms / 1000

    @property
    def enabled_endpoints(self) -> tuple[EndpointSpec, ...]:
        return tuple(e for e in self.endpoints if e.enabled)


OPTIONS: Final = tuple(f.name for f in dataclasses.fields(Config))
FILE_ONLY: Final = frozenset({"endpoints"})


def build_config(values: Mapping[str, tuple[Any, str]]) -> Config:
    """A Config from `{option: (raw value, source)}`; the source names it in errors."""
    parsed: dict[str, Any] = {}
    for name, (raw, source) in values.items():
        if name not in PARSERS:
            raise ConfigError(f"unknown option {name!r} in {source}")
        try:
            parsed[name] = PARSERS[name](raw)
        except ValueError as exc:
            raise ConfigError(f"invalid {name} from {source}: {raw!r} ({exc})") from None
    config = Config(**parsed)

    def where(name: str) -> str:
        return values[name][1] if name in values else "default"

    # Any batch call ends within connect_timeout + batch_timeout, answered or timed out, so a
    # flight hears back at least that often: a caller behind one must never get max_wait's
    # 503 while the upstream answers, or merely times out (docs/design.md, Flush policy).
    floors = {
        "window_ms": config.window_ms,
        "connect_timeout + batch_timeout": 1000 * (config.connect_timeout + config.batch_timeout),
    }
    for what, floor in floors.items():
        if config.max_wait_ms < floor:
            raise ConfigError(
                f"invalid max_wait_ms from {where('max_wait_ms')}: {config.max_wait_ms!r} "
                f"(must be >= {what}, {floor:g} ms)"
            )
    if _points_at_itself(config):
        raise ConfigError(
            f"invalid upstream from {where('upstream')}: {config.upstream!r} (it is the proxy's "
            f"own listen address, port {config.port} from {where('port')}: every request "
            "would come back to the proxy)"
        )
    return config


def _points_at_itself(config: Config) -> bool:
    """Whether the upstream is the proxy's own public listener: the same port, on a loopback
    address or the listen address itself. Each request would be sent back in until every
    upstream slot is taken. Other local addresses of a wildcard listener are not looked up."""
    url = URL(config.upstream)
    if url.port != config.port or url.host is None:
        return False
    if url.host in ("localhost", config.host):
        return True
    try:
        return ipaddress.ip_address(url.host).is_loopback
    except ValueError:  # a host name
        return False


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
