"""Pass-through with a fake upstream: only what a real dstack server cannot be made to do on
demand (compression, slow streams, odd headers, faults, websockets, huge bodies)."""

from __future__ import annotations

import asyncio
import gzip
import socket
import tracemalloc

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from harness.rawhttp import exchange
from proxy.keys import STATE_KEY

from .conftest import ProxyFactory, serve_proxy
from .fakes import GZIPPED, MB, FakeUpstream

Client = TestClient[web.Request, web.Application]


async def test_gzip_bytes_arrive_unchanged(proxy: Client) -> None:
    resp = await proxy.get("/gzip", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert resp.status == 200
    assert resp.headers["Content-Encoding"] == "gzip"
    assert int(resp.headers["Content-Length"]) == len(GZIPPED)
    assert await resp.read() == GZIPPED


@pytest.mark.parametrize("path", ["/untyped", "/untyped-stream"])
async def test_no_content_type_is_invented(proxy: Client, path: str) -> None:
    # aiohttp would label the body application/octet-stream, which a browser downloads where,
    # unlabelled, it would have looked at the bytes and shown them.
    resp = await proxy.get(path)
    assert resp.status == 200
    assert "Content-Type" not in resp.headers
    assert await resp.read() == b"<p>no type</p>"


async def test_long_and_many_response_headers_are_relayed(proxy: Client) -> None:
    # aiohttp's client refused them (8190 bytes a line, 128 headers): a 502 dstack never gave.
    limits = {"max_line_size": 1 << 18, "max_field_size": 1 << 18, "max_headers": 1024}
    async with (
        aiohttp.ClientSession(**limits) as client,  # a browser's, not aiohttp's defaults
        client.get(proxy.make_url("/big-headers")) as resp,
    ):
        assert resp.status == 200
        assert resp.headers.getall("Set-Cookie") == ["big=" + "c" * 20_000]
        assert [resp.headers[f"X-Many-{i}"] for i in range(300)] == [str(i) for i in range(300)]
        assert await resp.read() == b"ok"


async def test_no_accept_encoding_is_invented(proxy: Client, fake: FakeUpstream) -> None:
    resp = await proxy.get("/anything", skip_auto_headers=["Accept-Encoding", "User-Agent"])
    assert resp.status == 200
    sent = fake.calls[-1].headers
    assert "accept-encoding" not in sent
    assert "user-agent" not in sent


async def test_first_chunk_reaches_client_before_upstream_finishes(
    proxy: Client, fake: FakeUpstream
) -> None:
    resp = await proxy.get("/slow")
    first = await asyncio.wait_for(resp.content.readany(), 5)
    assert first == b"first;"
    assert not fake.release_stream.is_set()
    fake.release_stream.set()
    assert await resp.read() == b"second"


async def test_hop_by_hop_headers_are_stripped_both_ways(proxy: Client, fake: FakeUpstream) -> None:
    resp = await proxy.get(
        "/headers",
        headers={
            "Connection": "keep-alive, X-Client-Private",
            "X-Client-Private": "secret",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic c2VjcmV0",
            "TE": "trailers",
            "X-Kept": "yes",
        },
    )
    sent = fake.calls[-1].headers
    for name in ("x-client-private", "keep-alive", "proxy-authorization", "te"):
        assert name not in sent
    assert sent["x-kept"] == ["yes"]
    for name in ("X-Upstream-Private", "Keep-Alive", "Proxy-Authenticate"):
        assert name not in resp.headers
    assert resp.headers.getall("Set-Cookie") == [
        "a=1; Path=/",
        "b=2; Expires=Wed, 21 Oct 2015 07:28:00 GMT",
    ]


async def test_forwarding_headers_replace_client_supplied_ones(
    proxy: Client, fake: FakeUpstream
) -> None:
    await proxy.get("/x", headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https"})
    sent = fake.calls[-1].headers
    assert sent["x-forwarded-for"] == ["127.0.0.1"]
    assert sent["x-forwarded-proto"] == ["http"]
    assert sent["x-forwarded-host"] == [f"{proxy.host}:{proxy.port}"]
    assert sent["host"] == [f"localhost:{fake_port(proxy)}"]


def fake_port(proxy: Client) -> int:
    from yarl import URL

    from proxy.keys import CONFIG_KEY

    port = URL(proxy.app[CONFIG_KEY].upstream).port
    assert port is not None
    return port


async def test_cookies_from_one_user_never_reach_another(proxy: Client, fake: FakeUpstream) -> None:
    resp = await proxy.get("/headers")  # the upstream sets cookies a and b
    assert len(resp.headers.getall("Set-Cookie")) == 2
    proxy.session.cookie_jar.clear()
    await proxy.get("/x")
    assert "cookie" not in fake.calls[-1].headers


async def test_query_and_raw_path_are_forwarded_verbatim(proxy: Client, fake: FakeUpstream) -> None:
    resp = await proxy.get("/api/a%2Fb/c?x=1&y=%20")
    assert resp.status == 200
    assert fake.calls[-1].path == "/api/a%2Fb/c?x=1&y=%20"


async def test_redirect_is_returned_not_followed_and_points_at_the_proxy(proxy: Client) -> None:
    resp = await proxy.get("/redirect", allow_redirects=False)
    assert resp.status == 307
    assert resp.headers["Location"] == f"http://{proxy.host}:{proxy.port}/landing"


async def _proxy_error(resp: aiohttp.ClientResponse) -> tuple[int, str, str, object]:
    """Status, marker header, content type and body of an answer the proxy made itself."""
    return resp.status, resp.headers["X-Proxy-Error"], resp.content_type, await resp.json()


def _detail(msg: str, code: str) -> object:
    """dstack's error shape (docs/dstack-api.md, Errors)."""
    return {"detail": [{"msg": msg, "code": code}]}


async def test_connection_reset_before_response_gives_502(proxy: Client) -> None:
    resp = await proxy.get("/reset")
    assert await _proxy_error(resp) == (
        502,
        "upstream_unavailable",
        "application/json",
        _detail("upstream failed: ServerDisconnectedError", "upstream_unavailable"),
    )


async def test_upstream_hang_gives_504(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(read_timeout=0.3)
    resp = await proxy.get("/hang")
    assert await _proxy_error(resp) == (
        504,
        "upstream_timeout",
        "application/json",
        _detail("upstream timed out", "upstream_timeout"),
    )


async def test_unreachable_upstream_gives_502(aiohttp_client) -> None:
    from proxy.app import make_app
    from proxy.config import Config

    # A port held by a socket that never listens refuses connections, and no other socket can
    # take it meanwhile: a port merely found free could be handed to the proxy's own test
    # server, which would then forward to itself (503 upstream_busy, not 502).
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        upstream = f"http://127.0.0.1:{held.getsockname()[1]}"
        proxy = await serve_proxy(aiohttp_client, make_app(Config(upstream=upstream)))
        resp = await proxy.post("/api/users/get_my_user", json={})
    status, marker, ctype, body = await _proxy_error(resp)
    assert (status, marker, ctype) == (502, "upstream_unavailable", "application/json")
    assert body == _detail(body["detail"][0]["msg"], "upstream_unavailable")  # type: ignore[index]
    assert body["detail"][0]["msg"].startswith("upstream unreachable: ")  # type: ignore[index]


async def test_truncated_upstream_body_read_whole_gives_a_clean_502(proxy: Client) -> None:
    # Read whole before answering, so nothing was sent yet: the client gets a real error.
    resp = await proxy.get("/truncated")
    assert await _proxy_error(resp) == (
        502,
        "upstream_unavailable",
        "application/json",
        _detail("upstream failed: ClientPayloadError", "upstream_unavailable"),
    )


async def test_truncated_streamed_upstream_body_aborts_the_client_connection(
    make_proxy: ProxyFactory,
) -> None:
    proxy = await make_proxy(buffer_bytes=0)  # every body streamed
    resp = await proxy.get("/truncated")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()


async def _raw_status(proxy: Client, data: bytes) -> int:
    """Send bytes as they are (no client library would send these) and read the status."""
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return int(answer.split(b"\r\n")[0].split()[1])  # aiohttp's own parser answers in 1.0


async def test_absolute_form_target_never_reaches_another_host(
    proxy: Client, fake: FakeUpstream
) -> None:
    request = b"GET http://other-host/x HTTP/1.1\r\nHost: other-host\r\nConnection: close\r\n\r\n"
    assert await _raw_status(proxy, request) == 400
    assert fake.calls == []


@pytest.mark.parametrize(
    "request_line, status, code",
    [
        (b"GET //other-host/x HTTP/1.1", 400, b"bad_request_target"),
        (b"GET /a\\b HTTP/1.1", 400, b"bad_request_target"),
        (b"TRACE / HTTP/1.1", 405, b"method_not_allowed"),
        (b"OPTIONS * HTTP/1.1", 400, b"bad_request_target"),
        # Bytes that are not UTF-8 would reach dstack without them (aiohttp's writer).
        (b"GET /x HTTP/1.1\r\nX-Note: caf\xe9", 400, b"bad_header"),
        (b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nX-Note: \xff", 400, b"bad_header"),
    ],
)
async def test_odd_targets_methods_and_headers_are_refused(
    proxy: Client, fake: FakeUpstream, request_line: bytes, status: int, code: bytes
) -> None:
    request = request_line + b"\r\nHost: x\r\nConnection: close\r\n\r\n"
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(request)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert int(head.split()[1]) == status
    assert b"X-Proxy-Error: " + code in head.split(b"\r\n")
    assert orjson.loads(body)["detail"][0]["code"] == code.decode()
    if status == 405:
        assert b"Allow: DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT" in head.split(b"\r\n")
    assert fake.calls == []


async def test_a_utf_8_header_reaches_upstream_as_sent(proxy: Client, fake: FakeUpstream) -> None:
    request = b"GET /x HTTP/1.1\r\nHost: x\r\nX-Note: caf\xc3\xa9\r\nConnection: close\r\n\r\n"
    assert await _raw_status(proxy, request) == 200
    assert fake.calls[-1].headers["x-note"] == ["café"]


@pytest.mark.parametrize("expect", [b"foo", b"100-continue, foo"])
async def test_an_unknown_expectation_is_ignored_as_dstack_does(
    proxy: Client, fake: FakeUpstream, expect: bytes
) -> None:
    # aiohttp's default answers 417 before any handler runs; uvicorn ignores it.
    request = (
        b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: " + expect + b"\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n\r\n{}"
    )
    assert await _raw_status(proxy, request) == 200
    assert (fake.calls[-1].path, fake.calls[-1].body) == ("/x", b"{}")
    assert "expect" not in fake.calls[-1].headers


@pytest.mark.parametrize("target", [b"other-host:443", b"/x"])
async def test_connect_is_refused_before_routing(
    proxy: Client, fake: FakeUpstream, target: bytes
) -> None:
    """aiohttp reads every CONNECT target as an authority (`host:port`), with no path at all,
    so its router refuses it before the proxy's handler runs (app.py, _EveryTarget): its own
    plain 404, and nothing is sent upstream."""
    request = b"CONNECT " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(request)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 ")
    assert body == b"404: Not Found"
    assert fake.calls == []


async def test_a_request_with_both_content_length_and_chunked_never_reaches_upstream(
    proxy: Client, fake: FakeUpstream
) -> None:
    request = (
        b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
    )
    assert await _raw_status(proxy, request) == 400
    assert fake.calls == []


@pytest.mark.parametrize("path", [b"/upload", b"/api/project/p/runs/stop"])
async def test_a_chunk_size_that_breaks_the_framing_midway_gets_the_400_it_gets_at_once(
    proxy: Client, fake: FakeUpstream, path: bytes
) -> None:
    # Once the handler is reading the body (streaming it upstream, or holding it to batch),
    # aiohttp's parser drops the body without a word when a later chunk-size line is malformed:
    # unless the proxy hears of it, the client waits for as long as it keeps the connection.
    head = (
        b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer member\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"run\r\n'
    )
    broken = b'zz\r\ns_names": ["a"], "abort": false}\r\n0\r\n\r\n'
    at_once = await exchange(proxy.host, proxy.port, head + broken)
    assert (at_once.status, at_once.content_type) == (400, "text/plain; charset=utf-8")
    assert b"chunk size" in at_once.body
    midway = await exchange(proxy.host, proxy.port, (head, 0.5, broken), timeout=5)
    assert midway == at_once
    if path == b"/upload":  # it was under way upstream, and was cut there, never completed
        assert (fake.uploading, fake.uploaded) == (1, 0)
    assert fake.runs_calls() == []
    stop = {"runs_names": ["a"], "abort": False}
    resp = await proxy.post(
        "/api/project/p/runs/stop", json=stop, headers={"Authorization": "Bearer member"}
    )
    assert (resp.status, await resp.json()) == (200, None)


async def test_websocket_echo_and_close_code_and_reason_are_relayed(proxy: Client) -> None:
    async with proxy.ws_connect("/ws", protocols=("echo.v1",)) as ws:
        assert ws.protocol == "echo.v1"
        await ws.send_str("hi")
        assert (await ws.receive_str(timeout=5)) == "echo:hi"
        await ws.send_bytes(b"abc")
        assert (await ws.receive_bytes(timeout=5)) == b"cba"
        await ws.send_str("close-me")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 4001, "asked")


async def test_refused_websocket_upgrade_is_relayed_whole(proxy: Client) -> None:
    # aiohttp's ws_connect drops the refusal's body; the proxy must not leave the client
    # waiting for it, nor answer with a different one.
    resp = await asyncio.wait_for(
        proxy.get(
            "/ws-refused",
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        ),
        5,
    )
    assert resp.status == 403
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert await asyncio.wait_for(resp.json(), 5) == {"detail": "refused"}


async def test_refused_websocket_upgrade_keeps_the_upstream_status_and_headers(
    proxy: Client,
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await proxy.ws_connect("/ws-refused")
    assert refused.value.status == 403
    assert refused.value.headers is not None
    assert refused.value.headers["X-Refused-By"] == "upstream"


async def test_an_incomplete_handshake_is_plain_http_and_opens_no_upstream_websocket(
    proxy: Client, fake: FakeUpstream
) -> None:
    # Upgrade without Sec-WebSocket-Key: not a WebSocket handshake, so no upstream leg that
    # the proxy could then fail to close.
    resp = await proxy.get("/ws-probe", headers={"Upgrade": "websocket", "Connection": "Upgrade"})
    assert resp.status == 200
    call = fake.calls[-1]
    assert call.path == "/ws-probe"
    assert "upgrade" not in call.headers


async def test_large_upload_and_download_stream_with_flat_memory(
    proxy: Client, fake: FakeUpstream
) -> None:
    size = 50 * MB

    async def body():
        chunk = b"u" * (256 << 10)
        for _ in range(size // len(chunk)):
            yield chunk

    tracemalloc.start()
    try:
        resp = await proxy.post("/upload", data=body())
        assert (await resp.json()) == {"size": size}
        resp = await proxy.get("/download/50")
        received = 0
        async for chunk in resp.content.iter_any():
            received += len(chunk)
        assert received == size
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Proxy, fake upstream and client share this process: all three together stay far
    # below one copy of the body.
    assert peak < 12 * MB, f"peak traced memory {peak / MB:.1f} MiB"


async def test_request_content_length_is_kept_so_upload_limits_still_hold(
    proxy: Client, fake: FakeUpstream
) -> None:
    # dstack reads its upload limit from Content-Length only; re-chunking would bypass it.
    body = b"x" * 3000
    await proxy.post("/api/project/main/repos/upload_code", data=body)
    call = fake.calls[-1]
    assert call.headers["content-length"] == ["3000"]
    assert "transfer-encoding" not in call.headers
    assert call.body == body


@pytest.mark.parametrize(
    "body",
    [gzip.compress(bytes(8 * MB)), b'{"not": "gzip"}'],
    ids=["8 MiB of zeros in 8 KiB of gzip", "labelled gzip, not gzip"],
)
async def test_a_compressed_request_body_goes_upstream_as_sent(
    proxy: Client, fake: FakeUpstream, body: bytes
) -> None:
    # dstack reads a request body's bytes and ignores its Content-Encoding: a body decoded on
    # the way would get another answer there (and a small gzip would grow in the proxy's memory,
    # and a bad one would fail in the proxy).
    resp = await proxy.post(
        "/api/project/main/repos/upload_code", data=body, headers={"Content-Encoding": "gzip"}
    )
    assert resp.status == 200
    call = fake.calls[-1]
    assert call.body == body
    assert call.headers["content-encoding"] == ["gzip"]
    assert call.headers["content-length"] == [str(len(body))]
    assert "transfer-encoding" not in call.headers


async def test_head_gets_the_upstream_headers_and_no_body(proxy: Client) -> None:
    resp = await proxy.head("/download/1")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(MB)
    assert await resp.read() == b""


async def test_shutdown_closes_open_websockets_as_going_away(proxy: Client) -> None:
    async with proxy.ws_connect("/ws") as ws:
        await ws.send_str("hi")
        assert (await ws.receive_str(timeout=5)) == "echo:hi"
        await asyncio.wait_for(proxy.app.shutdown(), 5)  # what SIGTERM runs
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, aiohttp.WSCloseCode.GOING_AWAY)


async def test_a_websocket_accepted_during_the_drain_is_closed_as_going_away_too(
    proxy: Client, fake: FakeUpstream
) -> None:
    # Its handshake was still waiting on the upstream when the drain closed the open sockets.
    connecting = asyncio.ensure_future(proxy.ws_connect("/ws-held"))
    while not fake.ws_held:
        await asyncio.sleep(0.01)
    shutdown = asyncio.ensure_future(proxy.app.shutdown())  # what SIGTERM runs
    while not proxy.app[STATE_KEY].draining:
        await asyncio.sleep(0.01)
    fake.ws_gate.set()
    ws = await asyncio.wait_for(connecting, 5)
    msg = await ws.receive(timeout=5)  # not at the drain's deadline (8 s), and not as 1006
    assert (msg.type, msg.data, msg.extra) == (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSCloseCode.GOING_AWAY,
        "shutdown",
    )
    await asyncio.wait_for(shutdown, 5)


async def test_an_upstream_that_vanishes_closes_the_client_with_a_sendable_code(
    proxy: Client,
) -> None:
    # 1006 reports an abnormal close locally but may never be sent in a frame (RFC 6455 §7.4.1).
    async with proxy.ws_connect("/ws") as ws:
        await ws.send_str("vanish")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, aiohttp.WSCloseCode.INTERNAL_ERROR)
