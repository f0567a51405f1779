"""A batch call answers within its callers' time: batch_timeout plus the connect timeout from the
batch's first caller arriving (`BATCH_OPENED`), however long the batch waited before leaving."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from yarl import URL

from proxy.batching.batches import BatchTarget, UpstreamReply
from proxy.batching.dispatching import BATCH_OPENED
from proxy.batching.endpoints import DEFAULT_ENDPOINTS
from proxy.config import Config
from proxy.edge.upstream import make_batch_session
from proxy.errors import UpstreamBusy, UpstreamTimeout
from proxy.intake.calls import HttpSend
from proxy.ops.metrics import Metrics

SPEC = next(s for s in DEFAULT_ENDPOINTS if s.name == "runs/stop")
CONFIG = Config(batch_timeout=2.0, connect_timeout=1.0)  # a caller is owed an answer in 3 s


async def _send_with_upstream(delay: float, opened_ago: float | None) -> tuple[object, int, float]:
    """Send one call to an upstream that answers after `delay` s, for a batch whose first
    caller arrived `opened_ago` s before; its outcome, the calls the upstream got, and how long
    the send took."""
    calls = 0

    async def stop(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await asyncio.sleep(delay)
        return web.json_response(None)

    app = web.Application()
    app.router.add_post("/api/project/p/runs/stop", stop)
    async with TestServer(app) as server, make_batch_session(CONFIG) as session:
        send = HttpSend(session, Metrics())
        target = BatchTarget(
            SPEC, URL(str(server.make_url("/api/project/p/runs/stop"))), CIMultiDict()
        )
        loop = asyncio.get_running_loop()
        token = None if opened_ago is None else BATCH_OPENED.set(loop.time() - opened_ago)
        started = loop.time()
        try:
            outcome = await send(target, ["r1"], (("abort", False),), "c1")
        finally:
            if token is not None:
                BATCH_OPENED.reset(token)
        return outcome, calls, loop.time() - started


async def test_a_batch_that_waited_gets_only_what_is_left_of_its_callers_time() -> None:
    # Waited 2.5 s of its 3: the call may take 0.5 s more, not batch_timeout's 2.
    outcome, calls, took = await _send_with_upstream(delay=5.0, opened_ago=2.5)
    assert isinstance(outcome, UpstreamTimeout)
    assert calls == 1
    assert 0.4 <= took < 1.5, took


async def test_a_batch_whose_callers_time_is_up_is_not_sent() -> None:
    outcome, calls, _ = await _send_with_upstream(delay=0.0, opened_ago=3.5)
    assert isinstance(outcome, UpstreamBusy) and outcome.status == 503
    assert "not sent" in str(outcome)
    assert calls == 0


async def test_a_fresh_batch_keeps_the_whole_batch_timeout() -> None:
    # 1.5 s is within batch_timeout (2 s) and within the callers' 3 s: answered.
    outcome, calls, _ = await _send_with_upstream(delay=1.5, opened_ago=0.0)
    assert isinstance(outcome, UpstreamReply) and outcome.status == 200
    assert calls == 1


async def test_without_a_batch_the_session_timeouts_apply() -> None:
    outcome, calls, took = await _send_with_upstream(delay=5.0, opened_ago=None)
    assert isinstance(outcome, UpstreamTimeout)
    assert calls == 1
    assert 1.9 <= took < 3.5, took  # batch_timeout, 2 s
