"""A bare aiohttp pass-through: one shared ClientSession, the request body read whole and sent,
the answer read whole and returned. No logging, metrics, header policy or limits: the floor
that the proxy's own pass-through is measured against (docs/measurements.md).

    python -m bench.bare_passthrough UPSTREAM_ORIGIN PORT [asyncio|uvloop]
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import hdrs, web

SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session")
ORIGIN: web.AppKey[str] = web.AppKey("origin")
# Framing and connection headers belong to each hop; everything else is passed as it came.
_DROPPED = frozenset(
    h.lower() for h in (hdrs.HOST, hdrs.CONNECTION, hdrs.CONTENT_LENGTH, hdrs.TRANSFER_ENCODING)
)


async def handle(request: web.Request) -> web.Response:
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROPPED}
    async with request.app[SESSION].request(
        request.method, request.app[ORIGIN] + request.raw_path, headers=headers, data=body
    ) as resp:
        answer = await resp.read()
        return web.Response(
            status=resp.status,
            body=answer,
            headers={hdrs.CONTENT_TYPE: resp.headers.get(hdrs.CONTENT_TYPE, "")},
        )


def make_app(origin: str) -> web.Application:
    app = web.Application()
    app[ORIGIN] = origin

    async def session(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(auto_decompress=False) as s:
            app[SESSION] = s
            yield

    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main() -> None:
    origin, port = sys.argv[1], int(sys.argv[2])
    loop = asyncio.new_event_loop()
    if sys.argv[3:] == ["uvloop"]:
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(
        make_app(origin), host="127.0.0.1", port=port, access_log=None, print=None, loop=loop
    )


if __name__ == "__main__":
    main()
