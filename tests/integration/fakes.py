"""A recording fake upstream, for what a real dstack server cannot be made to do on demand:
faults, delays, odd framing. It also mimics dstack's stop/delete contract closely enough to
check how the proxy splits and answers batches (docs/dstack-api.md)."""

from __future__ import annotations

import asyncio
import gzip
from dataclasses import dataclass, field

import orjson
from aiohttp import WSMsgType, web

GZIPPED = gzip.compress(b'{"hello": "world"}' * 100)
MB = 1 << 20


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, list[str]]
    body: bytes

    @property
    def json(self) -> object:
        return orjson.loads(self.body)


@dataclass
class FakeUpstream:
    """Records every request; behaviour is switched by the test through attributes."""

    calls: list[Call] = field(default_factory=list)
    active_runs: set[str] = field(default_factory=set)  # runs/delete refuses these (400)
    tokens: dict[str, bool] = field(default_factory=lambda: {"member": True, "outsider": False})
    status_override: int | None = None  # answer every runs/* call with this status
    gate: asyncio.Event | None = None  # runs/* and secrets/* calls wait on it when set
    release_stream: asyncio.Event = field(default_factory=asyncio.Event)
    uploaded: int = 0
    uploading: int = 0  # /upload calls whose body has begun
    secrets: set[str] = field(default_factory=set)  # secrets/delete refuses unknown names
    runs_delay: float = 0.005  # long enough for concurrent runs/* calls to overlap
    in_flight: int = 0  # runs/* and secrets/* calls being answered right now
    max_in_flight: int = 0
    secrets_in_flight: list[set[str]] = field(default_factory=list)  # names of calls under way
    overlaps: int = 0  # secrets/delete calls that arrived naming a secret of one under way
    ws_closed: list[int] = field(default_factory=list)  # close codes the proxy sent /ws
    ws_gate: asyncio.Event = field(default_factory=asyncio.Event)  # /ws-held accepts once set
    ws_held: int = 0  # /ws-held handshakes waiting on it

    def app(self) -> web.Application:
        app = web.Application(client_max_size=0)
        r = app.router
        r.add_post("/api/project/{project}/runs/stop", self.runs)
        r.add_post("/api/project/{project}/runs/delete", self.runs)
        r.add_post("/api/project/{project}/secrets/delete", self.delete_secrets)
        r.add_get("/gzip", self.gzip)
        r.add_get("/untyped", self.untyped)
        r.add_get("/untyped-stream", self.untyped)
        app.on_response_prepare.append(_untype)
        r.add_get("/slow", self.slow)
        r.add_get("/headers", self.headers)
        r.add_get("/big-headers", self.big_headers)
        r.add_get("/reset", self.reset)
        r.add_get("/truncated", self.truncated)
        r.add_get("/hang", self.hang)
        r.add_get("/ws", self.websocket)
        r.add_get("/ws-held", self.held_websocket)
        r.add_get("/ws-refused", self.refuse_websocket)
        r.add_get("/ws-deaf", self.deaf_websocket)
        r.add_post("/upload", self.upload)
        r.add_get("/download/{mb}", self.download)
        r.add_get("/redirect", self.redirect)
        r.add_route("*", "/{tail:.*}", self.echo)
        return app

    def runs_calls(self, suffix: str = "") -> list[Call]:
        return [c for c in self.calls if "/runs/" in c.path and c.path.endswith(suffix)]

    async def _record(self, request: web.Request) -> Call:
        headers: dict[str, list[str]] = {}
        for k, v in request.headers.items():
            headers.setdefault(k.lower(), []).append(v)
        call = Call(request.method, request.raw_path, headers, await request.read())
        self.calls.append(call)
        return call

    async def runs(self, request: web.Request) -> web.Response:
        call = await self._record(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.runs_delay)
            if self.gate is not None:
                await self.gate.wait()
            return self._answer_runs(request, call)
        finally:
            self.in_flight -= 1

    async def delete_secrets(self, request: web.Request) -> web.Response:
        call = await self._record(request)
        names = orjson.loads(call.body)["secrets_names"]
        mine = set(names)
        self.overlaps += any(mine & other for other in self.secrets_in_flight)
        self.secrets_in_flight.append(mine)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.005)  # long enough for concurrent calls to overlap
            if self.gate is not None:
                await self.gate.wait()
        finally:
            self.in_flight -= 1
            self.secrets_in_flight.remove(mine)
        missing = [n for n in dict.fromkeys(names) if n not in self.secrets]
        if missing:
            return _detail(400, f"Secrets not found: {', '.join(missing)}", "resource_not_exists")
        self.secrets -= set(names)
        return web.json_response(None)

    def _answer_runs(self, request: web.Request, call: Call) -> web.Response:
        if self.status_override is not None:
            return _detail(self.status_override, "overridden")
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.tokens:
            return web.json_response({"detail": {"msg": "Invalid token", "code": None}}, status=403)
        if not self.tokens[token]:
            return web.json_response({"detail": {"msg": "Access denied", "code": None}}, status=403)
        names = orjson.loads(call.body)["runs_names"]
        busy = [n for n in names if n in self.active_runs]
        if request.path.endswith("/delete") and busy:
            return _detail(400, f"Cannot delete active runs: {busy!r}", "error")
        return web.json_response(None)

    async def echo(self, request: web.Request) -> web.Response:
        call = await self._record(request)
        return web.json_response(
            {
                "method": call.method,
                "path": call.path,
                "headers": call.headers,
                "body": call.body.decode(errors="backslashreplace"),
            }
        )

    async def untyped(self, request: web.Request) -> web.StreamResponse:
        """A body with no Content-Type (see `_untype`): of known length, or chunked."""
        if request.path == "/untyped":
            return web.Response(body=b"<p>no type</p>")
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"<p>no type</p>")
        return resp

    async def gzip(self, request: web.Request) -> web.Response:
        return web.Response(
            body=GZIPPED, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    async def slow(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"first;")
        await self.release_stream.wait()
        await resp.write(b"second")
        await resp.write_eof()
        return resp

    async def headers(self, request: web.Request) -> web.Response:
        await self._record(request)
        resp = web.Response(text="ok")
        resp.headers["Connection"] = "X-Upstream-Private"
        resp.headers["X-Upstream-Private"] = "secret"
        resp.headers["Keep-Alive"] = "timeout=5"
        resp.headers["Proxy-Authenticate"] = "Basic"
        resp.headers.add("Set-Cookie", "a=1; Path=/")
        resp.headers.add("Set-Cookie", "b=2; Expires=Wed, 21 Oct 2015 07:28:00 GMT")
        return resp

    async def big_headers(self, request: web.Request) -> web.Response:
        # What dstack relays from a service as it came: a long cookie, many headers.
        await self._record(request)
        resp = web.Response(text="ok")
        resp.headers.add("Set-Cookie", "big=" + "c" * 20_000)
        for i in range(300):
            resp.headers.add(f"X-Many-{i}", str(i))
        return resp

    async def reset(self, request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.abort()
        await asyncio.sleep(0.1)
        return web.Response()

    async def truncated(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b"x" * 100)
        assert request.transport is not None
        request.transport.abort()
        return resp

    async def hang(self, request: web.Request) -> web.Response:
        await self._record(request)
        await asyncio.sleep(3600)
        return web.Response()

    async def held_websocket(self, request: web.Request) -> web.WebSocketResponse:
        self.ws_held += 1
        await self.ws_gate.wait()
        return await self.websocket(request)

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("echo.v1",), autoclose=False)
        await ws.prepare(request)
        while True:
            msg = await ws.receive()
            if msg.type == WSMsgType.CLOSE:  # as sent by the proxy, before we answer it
                self.ws_closed.append(msg.data)
                await ws.close()
                break
            if msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                break
            if msg.type == WSMsgType.TEXT:
                if msg.data == "close-me":
                    await ws.close(code=4001, message=b"asked")
                    break
                if msg.data == "vanish":  # the upstream dies without a close frame
                    assert request.transport is not None
                    request.transport.abort()
                    break
                await ws.send_str("echo:" + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    async def deaf_websocket(self, request: web.Request) -> web.WebSocketResponse:
        # Accepts, then never reads a frame, so never answers a ping: a peer that is gone.
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await asyncio.sleep(3600)
        return ws

    async def refuse_websocket(self, request: web.Request) -> web.Response:
        # What dstack 0.22.5 does with every handshake (docs/dstack-api.md, "Traffic that
        # only passes through").
        return web.json_response(
            {"detail": "refused"}, status=403, headers={"X-Refused-By": "upstream"}
        )

    async def upload(self, request: web.Request) -> web.Response:
        self.uploading += 1
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        self.uploaded = size
        return web.json_response({"size": size})

    async def download(self, request: web.Request) -> web.StreamResponse:
        total = int(request.match_info["mb"]) * MB
        resp = web.StreamResponse(headers={"Content-Length": str(total)})
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        chunk = b"d" * (256 << 10)
        for _ in range(total // len(chunk)):
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def redirect(self, request: web.Request) -> web.Response:
        location = f"http://{request.host}/landing"
        return web.Response(status=307, headers={"Location": location})


async def _untype(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp gives every response with a body a Content-Type; a server that sends none (a
    # user's service behind dstack's proxy routes, say) is what these paths stand for.
    if request.path.startswith("/untyped"):
        del response.headers["Content-Type"]


def _detail(status: int, msg: str, code: str | None = None) -> web.Response:
    return web.json_response({"detail": [{"msg": msg, "code": code}]}, status=status)
