"""A recording upstream for load and soak runs, as its own process: it answers the batchable
`runs/*` calls like dstack (200 `null`, or 403 for an outsider's token) after `delay` seconds,
or holds them all until released; anything else is answered 200 with a small JSON echo.

    python -m harness.slow_upstream PORT [DELAY]

Control routes: `POST /_hold` holds every runs/* call from now on, `POST /_release` lets them
go, `GET /_calls` lists the runs/* calls seen (path, credential headers, body) and clears the
list. Tokens starting with `outsider` are refused 403, as dstack refuses a non-member.
"""

from __future__ import annotations

import asyncio
import sys

import orjson
from aiohttp import web

CALLS = web.AppKey("calls", list)
GATE = web.AppKey("gate", asyncio.Event)
DELAY = web.AppKey("delay", float)
DENIED = {"detail": [{"msg": "Access denied", "code": None}]}


async def runs(request: web.Request) -> web.Response:
    body = await request.read()
    request.app[CALLS].append(
        {
            "path": request.raw_path,
            "authorization": request.headers.get("Authorization"),
            "cookie": request.headers.get("Cookie"),
            "version": request.headers.get("X-API-Version"),
            "body": orjson.loads(body),
        }
    )
    await asyncio.sleep(request.app[DELAY])
    await request.app[GATE].wait()
    token = request.headers.get("Authorization", "").removeprefix("Bearer ")
    if token.startswith("outsider"):
        return web.Response(body=orjson.dumps(DENIED), status=403, content_type="application/json")
    return web.Response(body=b"null", content_type="application/json")


async def other(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"path": request.raw_path, "size": len(body)})


async def hold(request: web.Request) -> web.Response:
    request.app[GATE].clear()
    return web.json_response(None)


async def release(request: web.Request) -> web.Response:
    request.app[GATE].set()
    return web.json_response(None)


async def calls(request: web.Request) -> web.Response:
    seen, request.app[CALLS][:] = list(request.app[CALLS]), []
    return web.Response(body=orjson.dumps(seen), content_type="application/json")


def make_app(delay: float) -> web.Application:
    app = web.Application(client_max_size=16 << 20)
    app[CALLS] = []
    app[DELAY] = delay
    app[GATE] = asyncio.Event()
    app[GATE].set()
    app.router.add_post("/_hold", hold)
    app.router.add_post("/_release", release)
    app.router.add_get("/_calls", calls)
    app.router.add_post("/api/project/{project}/runs/{op:stop|delete}", runs)
    app.router.add_route("*", "/{tail:.*}", other)
    return app


def main() -> None:
    port = int(sys.argv[1])
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    web.run_app(make_app(delay), host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
