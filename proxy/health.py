"""`python -m proxy.health`: the image's HEALTHCHECK. Exits 0 when the admin listener's /healthz
answers 200, 1 otherwise.

It finds the admin listener the way the proxy does, from the same config file, `COALESCER_*`
environment and flags (give it the proxy's flags to follow them), and it never goes through
an HTTP proxy: `HTTP_PROXY`/`http_proxy` are for the proxy's callers, and a health check sent
to one would report a healthy container unhealthy.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import urllib.request
from collections.abc import Sequence
from typing import Final

from .config import ConfigError, load_config

TIMEOUT_SECONDS: Final = 2.0


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
    try:
        config = load_config(argv, os.environ)
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
