"""Two reference hops below aiohttp, for what a hop adds to a lone request (`lone.hops`):

- `raw`: uvloop and httptools only. A request is read whole, written as it came to a kept-alive
  upstream connection, and the answer relayed as it came: about the least any Python hop does.
- `client`: aiohttp's server, as in the bare aiohttp pass-through, but with that raw upstream
  connection in place of aiohttp's client: the two apart show what each half of an aiohttp hop
  costs.

Neither is a proxy: no header policy, limits, errors or pipelining, only what the hop
measurement sends (one request at a time per connection, answers framed by Content-Length).

    python -m bench.raw_hops raw|client UPSTREAM_ORIGIN PORT
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import NamedTuple, cast
from urllib.parse import urlsplit

import httptools
import uvloop
from aiohttp import hdrs, web

from harness.processes import Process, find_free_port

# Below uvicorn's 5 s keep-alive: a connection idle for longer is replaced, never reused as the
# server closes it.
KEEPALIVE_S = 4.0
# Framing and connection headers belong to each hop (as in bare_passthrough.py).
_DROPPED = frozenset(
    h.lower() for h in (hdrs.CONNECTION, hdrs.CONTENT_LENGTH, hdrs.TRANSFER_ENCODING)
)


class RawHop(Process):
    """This module's hop `mode` (raw, client) in front of `upstream`."""

    def __init__(self, mode: str, upstream: str, log: Path) -> None:
        port = find_free_port()
        self.url = f"http://127.0.0.1:{port}"
        super().__init__(
            [sys.executable, "-m", "bench.raw_hops", mode, upstream, str(port)],
            f"{self.url}/healthcheck",
            log,
        )


class Answer(NamedTuple):
    raw: bytes  # the whole response as it came
    status: int
    content_type: bytes | None
    body: bytes
    keep_alive: bool  # False: the upstream closes the connection after it


class _Upstream(asyncio.Protocol):
    """One kept-alive upstream connection, one exchange at a time."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[Answer] | None = None
        self._raw: list[bytes] = []
        self._body: list[bytes] = []
        self._content_type: bytes | None = None
        self.closed = False
        self.idle_since = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc or ConnectionResetError("upstream closed"))

    def data_received(self, data: bytes) -> None:
        self._raw.append(data)
        self._parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self._content_type = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        assert self._answer is not None
        raw, body = b"".join(self._raw), b"".join(self._body)
        self._answer.set_result(
            Answer(
                raw,
                self._parser.get_status_code(),
                self._content_type,
                body,
                self._parser.should_keep_alive(),
            )
        )

    async def exchange(self, request: bytes) -> Answer:
        assert self._transport is not None
        self._raw, self._body, self._content_type = [], [], None
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        try:
            return await self._answer
        finally:
            self._answer = None
            self.idle_since = time.monotonic()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class Pool:
    """Kept-alive upstream connections, reused while fresh."""

    def __init__(self, origin: str) -> None:
        parts = urlsplit(origin)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._idle: list[_Upstream] = []

    async def exchange(self, request: bytes) -> Answer:
        conn = self._take() or await self._open()
        answer = await conn.exchange(request)
        if answer.keep_alive:
            self._idle.append(conn)
        else:
            conn.close()
        return answer

    def _take(self) -> _Upstream | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and time.monotonic() - conn.idle_since < KEEPALIVE_S:
                return conn
            conn.close()
        return None

    async def _open(self) -> _Upstream:
        _, conn = await asyncio.get_running_loop().create_connection(
            _Upstream, self._host, self._port
        )
        return conn


class _RawHop(asyncio.Protocol):
    """The `raw` hop's client side: whole requests in, whole answers out, as they came."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._request: list[bytes] = []
        self._relaying: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._request.append(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_message_complete(self) -> None:
        request, self._request = b"".join(self._request), []
        self._relaying = asyncio.ensure_future(self._relay(request))

    async def _relay(self, request: bytes) -> None:
        answer = await self._pool.exchange(request)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(answer.raw)


def client_app(pool: Pool) -> web.Application:
    """The `client` hop: aiohttp's server, the raw upstream connection."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        lines = [f"{request.method} {request.raw_path} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in request.headers.items() if k.lower() not in _DROPPED]
        lines.append(f"Content-Length: {len(body)}")
        answer = await pool.exchange(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        ct = answer.content_type
        return web.Response(
            status=answer.status,
            body=answer.body,
            headers={hdrs.CONTENT_TYPE: ct.decode("latin-1")} if ct is not None else None,
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def _serve_raw(pool: Pool, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(
        lambda: _RawHop(pool), "127.0.0.1", port
    )
    await server.serve_forever()


def main() -> None:
    mode, origin, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pool = Pool(origin)
    if mode == "raw":
        uvloop.run(_serve_raw(pool, port))
    elif mode == "client":
        web.run_app(
            client_app(pool),
            host="127.0.0.1",
            port=port,
            access_log=None,
            print=None,
            loop=uvloop.new_event_loop(),
        )
    else:
        raise SystemExit(f"unknown mode {mode!r}: raw or client")


if __name__ == "__main__":
    main()
