"""WebSocket pass-through: the handshake ends at the proxy and a second WebSocket is opened
upstream; frames and close codes are relayed both ways (PROXY-PITFALLS A5)."""

from __future__ import annotations

import asyncio
from typing import Final

import aiohttp
import structlog
from aiohttp import WSMsgType, hdrs, web

from .forwarding import upstream_request
from .headers import WEBSOCKET_HANDSHAKE_HEADERS
from .keys import SESSION_KEY, STATE_KEY
from .upstream import classify, error_response

log = structlog.get_logger(__name__)

# No total timeout: a WebSocket lives as long as its peers keep it open.
_WS_TIMEOUT: Final = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0)


def is_websocket_upgrade(request: web.Request) -> bool:
    return (
        request.method == hdrs.METH_GET
        and request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
    )


async def handle_websocket(request: web.Request) -> web.StreamResponse:
    """Open the upstream leg first, so the client is accepted only with what the upstream chose."""
    url, headers = upstream_request(request)
    for name in WEBSOCKET_HANDSHAKE_HEADERS:
        headers.popall(name, None)
    protocols = [
        p.strip()
        for v in request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, ())
        for p in v.split(",")
        if p.strip()
    ]
    try:
        upstream = await request.app[SESSION_KEY].ws_connect(
            url, headers=headers, protocols=protocols, timeout=_WS_TIMEOUT, autoping=True
        )
    except aiohttp.WSServerHandshakeError as exc:
        # The upstream refused the upgrade (dstack 0.22.5 answers 403): so does the proxy.
        return web.Response(status=exc.status, text=exc.message or "")
    except (aiohttp.ClientError, TimeoutError) as exc:
        return error_response(classify(exc))
    client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else ())
    await client.prepare(request)
    state = request.app[STATE_KEY]
    state.websockets.add(client)
    try:
        await _relay(client, upstream)
    finally:
        state.websockets.discard(client)
        await upstream.close()
    return client


async def _relay(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    pumps = [
        asyncio.ensure_future(_pump(client, upstream)),
        asyncio.ensure_future(_pump(upstream, client)),
    ]
    try:
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
    code = upstream.close_code if upstream.closed else client.close_code
    if not client.closed:
        await client.close(code=code or aiohttp.WSCloseCode.OK)
    if not upstream.closed:
        await upstream.close(code=client.close_code or aiohttp.WSCloseCode.OK)


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    async for msg in source:
        if msg.type == WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type == WSMsgType.ERROR:
            log.debug("websocket_error", error=str(source.exception()))
            break
