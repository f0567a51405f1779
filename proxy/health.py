"""`python -m proxy.health`: the image's HEALTHCHECK. Exits 0 when the admin listener's /healthz
answers 200, 1 otherwise.

It finds the admin listener the way the proxy does: the same config file, `COALESCER_*`
environment and flags. Without flags of its own it takes the proxy's, read from
`/proc/1/cmdline` when PID 1 is the proxy (as in the image, whose CMD is in exec form). It never
goes through an HTTP proxy: `HTTP_PROXY`/`http_proxy` are for the proxy's callers, and a health
check sent to one would report a healthy container unhealthy, or a dead one healthy.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from .config import ConfigError, load_config

TIMEOUT_SECONDS: Final = 2.0
PID1_CMDLINE: Final = Path("/proc/1/cmdline")


def proxy_flags(cmdline: bytes) -> list[str] | None:
    """The flags in a `/proc/PID/cmdline` that runs the proxy (console script or
    `python -m proxy`), or None when it runs something else."""
    args = [a.decode(errors="replace") for a in cmdline.split(b"\0")]
    if args and args[-1] == "":
        args.pop()
    for i, arg in enumerate(args):
        if os.path.basename(arg) == "dstack-coalescer":
            return args[i + 1 :]
        if arg == "-m" and args[i + 1 : i + 2] == ["proxy"]:
            return args[i + 2 :]
    return None


def pid1_flags(path: Path = PID1_CMDLINE) -> list[str]:
    """The proxy's flags when PID 1 is the proxy, else none."""
    try:
        return proxy_flags(path.read_bytes()) or []
    except OSError:  # no /proc, or not allowed to read it
        return []


def healthz_url(host: str, port: int) -> str:
    """The URL that reaches an admin listener bound to `host`, from the same machine."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"http://{host}:{port}/healthz"  # a name: connect to it as given
    if address.is_unspecified:  # bound to every address: loopback is one of them
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    shown = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{shown}:{port}/healthz"


def check(url: str, timeout: float = TIMEOUT_SECONDS) -> bool:
    """True when `url` answers 200, asked directly (an empty ProxyHandler ignores *_proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except OSError:  # refused, timed out, or an HTTP error status
        return False


def main(argv: Sequence[str] | None = None) -> int:
    flags = list(sys.argv[1:] if argv is None else argv) or pid1_flags()
    try:
        config = load_config(flags, os.environ)
    except ConfigError as exc:
        print(f"dstack-coalescer health: {exc}", file=sys.stderr)
        return 2
    url = healthz_url(config.admin_host, config.admin_port)
    if check(url):
        return 0
    print(f"dstack-coalescer health: {url} did not answer 200", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
