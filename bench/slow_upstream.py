"""A fake upstream that holds every call until told to answer: what lets the proxy hold
thousands of requests at once. POST anything: wait, then 200 `null`. GET /healthcheck: 200.
GET /_release: answer every held call, and every later one at once. GET /_stats: calls so far.

    python -m bench.slow_upstream PORT
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

RELEASE = web.AppKey("release", asyncio.Event)
CALLS = web.AppKey("calls", list)


async def hold(request: web.Request) -> web.Response:
    await request.read()
    request.app[CALLS][0] += 1
    await request.app[RELEASE].wait()
    return web.Response(body=b"null", content_type="application/json")


async def release(request: web.Request) -> web.Response:
    request.app[RELEASE].set()
    return web.json_response({"released": True})


async def stats(request: web.Request) -> web.Response:
    return web.json_response({"calls": request.app[CALLS][0]})


async def healthcheck(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    app = web.Application()
    app[RELEASE] = asyncio.Event()
    app[CALLS] = [0]
    app.router.add_get("/healthcheck", healthcheck)
    app.router.add_get("/_release", release)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/{tail:.*}", hold)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
