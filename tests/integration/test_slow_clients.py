"""Long-lived and stuck exchanges against a fake upstream (what a real dstack server cannot be
made to do on demand): never-ending streams, idle and dead WebSockets, a full connection limit,
and an upstream that closes idle connections at 5 s like uvicorn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from .conftest import ProxyFactory, serve_proxy
from .fakes import FakeUpstream

Client = TestClient[web.Request, web.Application]
LIMIT = 2  # pool_size in these tests: anything that held a connection slot would starve


async def _echo_path(proxy: Client, path: str) -> str:
    resp = await asyncio.wait_for(proxy.get(path), 5)  # starved: never answered
    assert resp.status == 200
    return str((await resp.json())["path"])


async def test_never_ending_streams_and_idle_websockets_do_not_block_others(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(pool_size=LIMIT, connect_timeout=2.0)
    streams = [await asyncio.wait_for(proxy.get("/slow"), 5) for _ in range(LIMIT + 2)]
    for stream in streams:  # each one is under way: first chunk here, the rest never comes
        assert await asyncio.wait_for(stream.content.readany(), 5) == b"first;"
    sockets = [await asyncio.wait_for(proxy.ws_connect("/ws"), 5) for _ in range(LIMIT + 2)]
    try:
        assert await _echo_path(proxy, "/after-the-streams") == "/after-the-streams"
        await sockets[0].send_str("still there")
        assert await sockets[0].receive_str(timeout=5) == "echo:still there"
    finally:
        for ws in sockets:
            await ws.close()
        fake.release_stream.set()
        for stream in streams:
            assert await asyncio.wait_for(stream.read(), 5) == b"second"


async def test_stalled_uploads_hold_no_slot_and_still_arrive_whole(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    # A streamed upload (chunked here) goes at its client's pace, which may be never: were it
    # to hold one of `pool_size` slots, LIMIT stalled clients would leave every other request
    # 503 after the connect timeout.
    proxy = await make_proxy(pool_size=LIMIT, connect_timeout=0.5)
    more = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"first;"
        await more.wait()
        yield b"rest"

    uploads = [asyncio.ensure_future(proxy.post("/upload", data=body())) for _ in range(LIMIT + 1)]

    async def under_way(n: int) -> None:  # at the upstream, body begun, then stalled
        while fake.uploading < n:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(under_way(LIMIT), 5)  # as many as there are slots
    assert await _echo_path(proxy, "/after-the-uploads") == "/after-the-uploads"
    more.set()
    for upload in uploads:
        resp = await asyncio.wait_for(upload, 5)
        assert (resp.status, await resp.json()) == (200, {"size": len(b"first;rest")})


async def test_a_full_limit_answers_503_in_dstacks_shape_within_the_connect_timeout(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(pool_size=LIMIT, connect_timeout=0.5)
    stuck = [asyncio.ensure_future(proxy.get("/hang")) for _ in range(LIMIT)]
    while len([c for c in fake.calls if c.path == "/hang"]) < LIMIT:  # dstack is busy with them
        await asyncio.sleep(0.01)
    resp = await asyncio.wait_for(proxy.post("/api/users/get_my_user", json={}), 5)
    assert resp.status == 503
    assert resp.headers["X-Proxy-Error"] == "upstream_busy"
    assert await resp.json() == {
        "detail": [
            {"msg": "every upstream connection is in use; try again", "code": "upstream_busy"}
        ]
    }
    assert "/api/users/get_my_user" not in [c.path for c in fake.calls]
    for call in stuck:
        call.cancel()
    await asyncio.gather(*stuck, return_exceptions=True)


async def test_a_client_that_stops_answering_pings_is_closed_and_so_is_the_upstream_leg(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(websocket_heartbeat=0.2)
    # autoping off and nothing read: the client side of the proxy never gets a pong.
    ws = await proxy.ws_connect("/ws", autoping=False)
    try:
        while not fake.ws_closed:
            await asyncio.sleep(0.05)  # bounded by the test timeout: never noticed, never closed
        assert fake.ws_closed == [aiohttp.WSCloseCode.INTERNAL_ERROR]
    finally:
        await ws.close()


async def test_an_upstream_that_stops_answering_pings_closes_the_client_with_1011(
    make_proxy: ProxyFactory,
) -> None:
    proxy = await make_proxy(websocket_heartbeat=0.2)
    async with proxy.ws_connect("/ws-deaf") as ws:
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, aiohttp.WSCloseCode.INTERNAL_ERROR)


class IdleClosingUpstream:
    """A raw HTTP/1.1 server whose idle connections die at 5 s, as uvicorn's do; the close
    always crosses the next request (the worst case of the race): a request that arrives on a
    connection idle for 5 s or more is read and dropped without an answer."""

    IDLE = 5.0

    def __init__(self) -> None:
        self.answered = 0
        self.dropped = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        last = time.monotonic()
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                if time.monotonic() - last >= self.IDLE:
                    self.dropped += 1
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnull")
                await writer.drain()
                self.answered += 1
                last = time.monotonic()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def idle_closing() -> AsyncIterator[tuple[IdleClosingUpstream, int]]:
    upstream = IdleClosingUpstream()
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield upstream, port
    server.close()


async def test_no_request_fails_after_an_idle_gap_of_five_seconds(
    aiohttp_client: AiohttpClient, idle_closing: tuple[IdleClosingUpstream, int]
) -> None:
    from proxy.app import make_app
    from proxy.config import Config

    upstream, port = idle_closing
    client = await serve_proxy(
        aiohttp_client, make_app(Config(upstream=f"http://127.0.0.1:{port}"))
    )
    answers = []
    for gap in (0.0, IdleClosingUpstream.IDLE + 0.2):
        await asyncio.sleep(gap)
        # POST: not idempotent, so no client library would quietly retry it
        resp = await client.post("/api/users/get_my_user", json={})
        answers.append((resp.status, await resp.read()))
    assert answers == [(200, b"null"), (200, b"null")]
    assert upstream.dropped == 0
