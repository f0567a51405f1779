"""A batch call never fails on a pooled connection the upstream had already dropped.

uvicorn answers 500 when dstack's handler raises and then closes the connection without saying
so (docs/dstack-api.md, Refusals of the batchable endpoints). The next call of the flight, the
probe say, picked that connection from the pool and failed before reaching dstack. This fake
drops, unanswered, any request that arrives on a connection that carried a 500."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpServer

from proxy.batching.batches import BatchTarget, UpstreamReply
from proxy.batching.endpoints import DEFAULT_ENDPOINTS
from proxy.config import Config
from proxy.edge.upstream import make_batch_session
from proxy.errors import UpstreamUnavailable
from proxy.intake.calls import HttpSend
from proxy.ops.metrics import Metrics

SPEC = next(s for s in DEFAULT_ENDPOINTS if s.name == "fleets/delete_instances")


async def uvicorn_like(aiohttp_server: AiohttpServer) -> tuple[TestServer, list[object]]:
    dead: set[int] = set()  # transports that carried a 500
    seen: list[object] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        if id(transport) in dead:
            transport.close()  # as uvicorn: gone without an answer
            await asyncio.sleep(3600)
        nums = orjson.loads(await request.read())["instance_nums"]
        seen.append(nums)
        if any(n >= 2**63 for n in nums):
            dead.add(id(transport))
            return web.Response(status=500, text="Internal Server Error")
        return web.json_response(None)

    app = web.Application()
    app.router.add_post("/api/project/main/fleets/delete_instances", handler)
    return await aiohttp_server(app), seen


async def test_the_call_after_a_500_is_not_lost_to_the_connection_it_left(
    aiohttp_server: AiohttpServer,
) -> None:
    server, seen = await uvicorn_like(aiohttp_server)
    session = make_batch_session(Config())
    try:
        send = HttpSend(session, Metrics())
        target = BatchTarget(
            SPEC, server.make_url("/api/project/main/fleets/delete_instances"), CIMultiDict()
        )
        shared = (("name", "f"),)
        first = await send(target, [1, 2**63], shared, "c-0")
        probe = await send(target, [], shared, "c-1")  # on the pooled connection, first try
        assert isinstance(first, UpstreamReply) and first.status == 500
        assert isinstance(probe, UpstreamReply) and (probe.status, probe.body) == (200, b"null")
        assert seen == [[1, 2**63], []]  # the dropped try never reached the handler
    finally:
        await session.close()


async def test_a_connection_that_drops_a_fresh_call_is_not_retried(
    aiohttp_server: AiohttpServer,
) -> None:
    async def drop(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_post("/x", drop)
    server = await aiohttp_server(app)
    session = make_batch_session(Config())
    try:
        target = BatchTarget(SPEC, server.make_url("/x"), CIMultiDict())
        outcome = await HttpSend(session, Metrics())(target, [1], (("name", "f"),), "c-0")
        assert isinstance(outcome, UpstreamUnavailable)  # it may have reached the upstream
    finally:
        await session.close()
