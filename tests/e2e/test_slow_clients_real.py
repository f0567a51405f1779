"""Slow readers against a REAL dstack server: browsers on bad links downloading the web UI's
main bundle through the proxy must not keep anyone else from being served."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from harness.bursts import burst
from harness.processes import ProxyProcess
from harness.runs import create_active_runs, stop_runs_until_finished
from harness.server import DstackServer
from harness.versions import CURRENT_VERSION

# Against the current server only: plain pass-through, and CI's time budget.
pytestmark = pytest.mark.server_versions(CURRENT_VERSION)

PROJECT = "main"
POOL_SIZE = 4  # anything that held a slot per slow reader would starve at this size
SLOW_READERS = POOL_SIZE + 4
STOPS = 10


@pytest.fixture(scope="module")
def small_pool_proxy(
    dstack_server: DstackServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    log = tmp_path_factory.mktemp("proxy-small-pool") / "proxy.log"
    with ProxyProcess(
        dstack_server.url, log, "--pool-size", str(POOL_SIZE), "--connect-timeout", "3"
    ) as proxy:
        yield proxy


def _bundle_path(base: str) -> str:
    """The UI's main JavaScript bundle, as the index page names it."""
    import urllib.request

    with urllib.request.urlopen(base + "/", timeout=10) as resp:
        html = resp.read().decode()
    found = re.search(r'<script[^>]*src="(/main-[^"]+\.js)"', html)
    assert found is not None, html[:500]
    return found.group(1)


def _open_slow_reader(port: int, path: str) -> tuple[socket.socket, bytes]:
    """Ask for `path` with a tiny receive buffer, read only the status line, then stop reading."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: no autotuning
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock, sock.recv(15, socket.MSG_WAITALL)


async def test_slow_readers_of_the_ui_bundle_starve_no_api_call_and_no_batch(
    dstack_server: DstackServer, small_pool_proxy: ProxyProcess, cleanup_runs: list[str]
) -> None:
    bundle = _bundle_path(small_pool_proxy.url)
    readers = [
        await asyncio.to_thread(_open_slow_reader, small_pool_proxy.port, bundle)
        for _ in range(SLOW_READERS)
    ]
    try:
        assert [first for _, first in readers] == [b"HTTP/1.1 200 OK"] * SLOW_READERS
        token = dstack_server.admin_token
        async with aiohttp.ClientSession() as session:
            call = session.post(
                small_pool_proxy.url + "/api/users/get_my_user",
                data=b"{}",
                headers={"Authorization": f"Bearer {token}"},
            )
            async with await asyncio.wait_for(call, 10) as resp:
                assert resp.status == 200
                assert orjson.loads(await resp.read())["username"] == "admin"

        names = [f"slow-readers-{i}" for i in range(STOPS)]
        cleanup_runs += names
        create_active_runs(dstack_server, PROJECT, names)
        mark = dstack_server.log_mark()
        stops = burst(
            small_pool_proxy.url,
            f"/api/project/{PROJECT}/runs/stop",
            [{"runs_names": [n], "abort": False} for n in names],
            token,
        )
        assert await asyncio.wait_for(stops, 30) == [(200, b"null")] * STOPS
        assert dstack_server.count_requests("/runs/stop", since=mark) <= 2  # batched
    finally:
        for sock, _ in readers:
            sock.close()


@pytest.fixture
def cleanup_runs(dstack_server: DstackServer) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    stop_runs_until_finished(dstack_server, PROJECT, names)


def test_the_bundle_is_larger_than_socket_buffers_can_hide(small_pool_proxy: ProxyProcess) -> None:
    """The premise: the bundle is larger than the kernel's largest send buffer (4 MiB by
    default), so a reader that stops really leaves most of it unsent; else the test above
    would prove nothing."""
    import urllib.request

    with urllib.request.urlopen(small_pool_proxy.url + _bundle_path(small_pool_proxy.url)) as r:
        size = len(r.read())
    assert size > int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2]), size
