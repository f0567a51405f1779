"""WebSocket pass-through: the handshake ends at the proxy and a second WebSocket is opened
upstream; frames, close codes and close reasons are relayed both ways. Both legs send pings
every `websocket_heartbeat` seconds, so a peer that vanished without a close is noticed and the
other leg closed (1011). WebSockets hold no pass-through connection slot (forwarding.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

import aiohttp
import structlog
from aiohttp import WSMsgType, hdrs, web

from ..errors import UpstreamUnavailable
from .answers import error_response
from .headers import WEBSOCKET_HANDSHAKE_HEADERS, client_response_headers, connection_tokens
from .upstream import Settings, classify, release, request_target

log = structlog.get_logger(__name__)

# No total timeout: a WebSocket lives as long as its peers keep it open.
_WS_TIMEOUT: Final = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0)
SHUTDOWN: Final = b"shutdown"  # the reason of the 1001 that a drain closes a WebSocket with
_Socket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse
# Codes that report a close but may never be sent in a Close frame (RFC 6455 §7.4.1).
_UNSENDABLE: Final = frozenset({1005, 1006, 1015})


def is_websocket_upgrade(request: web.Request) -> bool:
    """A complete, valid client handshake (RFC 6455 §4.2.1); anything less is plain HTTP.
    The only place that decides whether a request is a WebSocket."""
    return (
        request.method == hdrs.METH_GET
        and request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
        and "upgrade" in connection_tokens(request.headers)
        and web.WebSocketResponse().can_prepare(request).ok
    )


async def handle_websocket(
    request: web.Request,
    session: aiohttp.ClientSession,
    config: Settings,
    sockets: set[web.WebSocketResponse],
    draining: Callable[[], bool],
) -> web.StreamResponse:
    """Open the upstream leg first, so the client is accepted only with what the upstream chose.
    The client's socket is in `sockets` while it is open (the drain closes them); one accepted
    once `draining()` is closed as the drain closes them."""
    url, pairs = request_target(request, config)
    headers = [(n, v) for n, v in pairs if n.lower() not in WEBSOCKET_HANDSHAKE_HEADERS]
    protocols = [
        p.strip()
        for v in request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, ())
        for p in v.split(",")
        if p.strip()
    ]
    try:
        upstream = await session.ws_connect(
            url,
            headers=headers,
            protocols=protocols,
            timeout=_WS_TIMEOUT,
            heartbeat=config.websocket_heartbeat,
        )
    except aiohttp.WSServerHandshakeError:
        # Refused (dstack 0.22.5 refuses every upgrade with 403). aiohttp drops the refusal's
        # body, so ask once more as plain HTTP and relay that answer whole.
        return await _relay_refusal(request, session, config)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return error_response(classify(exc))
    try:
        return await _serve(request, upstream, config, sockets, draining)
    finally:  # already closed with the right code, unless the relay was cut short
        await upstream.close(code=aiohttp.WSCloseCode.INTERNAL_ERROR)


async def _relay_refusal(
    request: web.Request, session: aiohttp.ClientSession, config: Settings
) -> web.StreamResponse:
    url, pairs = request_target(request, config)
    pairs += [(h, request.headers[h]) for h in (hdrs.UPGRADE, hdrs.CONNECTION)]
    try:
        async with session.get(
            url,
            headers=pairs,
            allow_redirects=False,
            auto_decompress=False,
        ) as resp:
            if resp.status == 101:  # accepted this time: nothing sane to relay
                return error_response(UpstreamUnavailable("upstream switched protocols"))
            body = await resp.read()
            release(resp)
            headers = client_response_headers(resp.headers, also=(hdrs.CONTENT_LENGTH,))
            return web.Response(status=resp.status, headers=headers, body=body)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return error_response(classify(exc))


async def _serve(
    request: web.Request,
    upstream: aiohttp.ClientWebSocketResponse,
    config: Settings,
    sockets: set[web.WebSocketResponse],
    draining: Callable[[], bool],
) -> web.StreamResponse:
    client = web.WebSocketResponse(
        protocols=[upstream.protocol] if upstream.protocol else (),
        heartbeat=config.websocket_heartbeat,
    )
    await client.prepare(request)
    if draining():  # the drain closed the open sockets while this handshake was under way
        await upstream.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=SHUTDOWN)
        await client.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=SHUTDOWN)
        return client
    sockets.add(client)
    try:
        await _relay(client, upstream)
    except asyncio.CancelledError:  # the drain deadline: no HTTP answer fits on this socket
        if request.transport is not None:
            request.transport.abort()
        raise
    finally:
        sockets.discard(client)
    return client


async def _relay(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    pumps = {
        asyncio.ensure_future(_pump(client, upstream)): upstream,
        asyncio.ensure_future(_pump(upstream, client)): client,
    }
    done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    first = done.pop()
    for pump in pumps:
        pump.cancel()
    await asyncio.gather(*pumps, return_exceptions=True)
    # The side whose pump ended first closed (or failed): pass its code and reason on.
    code, reason = (
        first.result() if not first.cancelled() and not first.exception() else (None, b"")
    )
    if code is None or code in _UNSENDABLE:  # the peer vanished without a proper close
        code, reason = aiohttp.WSCloseCode.INTERNAL_ERROR, b""
    for sink in (client, upstream):
        if not sink.closed:
            await sink.close(code=code, message=reason)


async def _pump(source: _Socket, sink: _Socket) -> tuple[int | None, bytes]:
    """Relay frames until `source` closes; return its close code and reason."""
    while True:
        msg = await source.receive()
        if msg.type == WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type == WSMsgType.CLOSE:
            return msg.data, (msg.extra or "").encode()
        else:  # CLOSING, CLOSED, ERROR
            if msg.type == WSMsgType.ERROR:
                log.debug("websocket_error", error=str(source.exception()))
            return source.close_code, b""
