"""A REAL dstack server (the pinned `dstack[server]` of the dev extra) on a free loopback port with
a temporary HOME and SQLite, and the proxy in front of it as its own process (`python -m proxy`),
both for the whole session. Upstream calls are counted from the server's own log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import ProxyProcess
from tests.support.server import DstackServer


@pytest.fixture(scope="session")
def dstack_server() -> Iterator[DstackServer]:
    with DstackServer() as server:
        yield server


@pytest.fixture(scope="session")
def proxy_process(
    dstack_server: DstackServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    log = tmp_path_factory.mktemp("proxy") / "proxy.log"
    with ProxyProcess(dstack_server.url, log, "--log-level", "info") as proxy:
        yield proxy
    print(f"proxy log: {log}")


@pytest.fixture(scope="session")
def proxy_url(proxy_process: ProxyProcess) -> str:
    return proxy_process.url


@pytest.fixture
def proxy_log(proxy_process: ProxyProcess) -> Path:
    return proxy_process.log
