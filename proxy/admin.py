"""The admin listener (its own address, loopback by default): liveness, readiness and the
proxy's Prometheus metrics. Never on the public port, where dstack's own /metrics passes."""

from __future__ import annotations

from typing import Final

import aiohttp
from aiohttp import web

from .keys import CONFIG_KEY, METRICS_KEY, PUBLIC_APP_KEY, SESSION_KEY, STATE_KEY
from .ops.metrics import CONTENT_TYPE

READINESS_TIMEOUT: Final = aiohttp.ClientTimeout(total=2.0)


def make_admin_app(public: web.Application) -> web.Application:
    """Admin routes reading the state of the `public` app."""
    admin = web.Application()
    admin[PUBLIC_APP_KEY] = public
    admin.router.add_get("/healthz", handle_healthz)
    admin.router.add_get("/readyz", handle_readyz)
    admin.router.add_get("/metrics", handle_metrics)
    return admin


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def handle_readyz(request: web.Request) -> web.Response:
    """Ready unless draining. dstack's health is not part of it: a slow /healthcheck during a
    burst would turn every replica unready at once, and the front would have none left
    (it is the `dstack_coalescer_upstream_healthy` metric instead)."""
    public = request.app[PUBLIC_APP_KEY]
    if public[STATE_KEY].draining:
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response({"status": "ready"})


async def upstream_healthy(public: web.Application) -> bool:
    """Whether dstack's /healthcheck answers 200 within READINESS_TIMEOUT."""
    url = public[CONFIG_KEY].upstream + "/healthcheck"
    try:
        async with public[SESSION_KEY].get(url, timeout=READINESS_TIMEOUT) as resp:
            await resp.read()
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def handle_metrics(request: web.Request) -> web.Response:
    """The metrics, with dstack's health probed once per scrape."""
    public = request.app[PUBLIC_APP_KEY]
    public[METRICS_KEY].upstream_healthy.set(1 if await upstream_healthy(public) else 0)
    body = public[METRICS_KEY].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
