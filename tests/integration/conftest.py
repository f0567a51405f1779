"""Fixtures: a recording fake upstream on a real socket, and the proxy app aimed at it by the
name `localhost` (an IP address would hide a cookie-jar leak: the default jar ignores IP hosts)."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, Final

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from proxy.app import make_app
from proxy.config import Config
from proxy.edge.framing import PublicRunner
from proxy.keys import METRICS_KEY
from proxy.serving import SERVER_OPTIONS

from .fakes import FakeUpstream

ProxyFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]

# The shipped policy (`quiet`) with a quiet gap that no loaded test machine can break, for the
# tests that check how a burst is cut into calls: the first request leads its idle key and goes
# as it came, and the rest, arriving within the gap of each other, go in one call beside it.
# Every test that uses it names it.
STEADY: Final = {"quiet_ms": 250, "window_ms": 500}


class ShippedServer(TestServer):
    """The proxy app served as `proxy.serving` runs it: its runner and options (aiohttp's test
    server would otherwise cancel a handler whose client left, decode request bodies, and
    leave a body whose chunk framing broke mid-way waiting for ever)."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return PublicRunner(self.app, SERVER_OPTIONS, **kwargs)


async def serve_proxy(
    aiohttp_client: AiohttpClient, app: web.Application
) -> TestClient[web.Request, web.Application]:
    return await aiohttp_client(ShippedServer(app))


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
async def upstream_server(aiohttp_server: AiohttpServer, fake: FakeUpstream) -> Any:
    # dstack reads a request body's bytes as sent, whatever its Content-Encoding says.
    return await aiohttp_server(fake.app(), auto_decompress=False)


@pytest.fixture
def make_proxy(aiohttp_client: AiohttpClient, upstream_server: Any) -> ProxyFactory:
    """Start the proxy in front of the fake upstream, with config overrides."""

    async def start(**overrides: Any) -> TestClient[web.Request, web.Application]:
        # The built-in defaults (what ships), but for what the test overrides; a test that
        # needs the fixed window's deterministic shapes says `policy="window"`.
        config = dataclasses.replace(
            Config(upstream=f"http://localhost:{upstream_server.port}"), **overrides
        )
        return await serve_proxy(aiohttp_client, make_app(config))

    return start


@pytest.fixture
async def proxy(make_proxy: ProxyFactory) -> TestClient[web.Request, web.Application]:
    return await make_proxy()


def metric(client: TestClient[web.Request, web.Application], name: str, **labels: str) -> float:
    """A sample's value from the proxy's own registry (0 when absent)."""
    value = client.app[METRICS_KEY].registry.get_sample_value(name, labels)
    return value or 0.0
