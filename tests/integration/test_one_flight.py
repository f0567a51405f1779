"""One flight per name (policy quiet, the default) or per key (window, idle, adaptive), through
the proxy and a recording fake upstream: batches that name the same secret reach the upstream
one after the other, in arrival order."""

from __future__ import annotations

import asyncio

from .conftest import ProxyFactory, metric
from .fakes import FakeUpstream

MEMBER = {"Authorization": "Bearer member"}
SECRETS = "/api/project/main/secrets/delete"


async def _until(condition: object, what: str) -> None:
    for _ in range(500):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_full_batches_under_policy_window_never_fly_side_by_side(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(policy="window", max_batch=2, window_ms=50)
    fake.secrets = {"s1", "s2", "s3"}
    fake.gate = asyncio.Event()
    lists = [["s1"], ["s2"], ["s1", "s3"], ["s3"], ["s1"]]  # batches [1 2] [3 4] [5]
    pending = []
    for names in lists:  # staggered so the arrival order is known
        body = {"secrets_names": names}
        pending.append(asyncio.ensure_future(proxy.post(SECRETS, json=body, headers=MEMBER)))
        await asyncio.sleep(0.01)
    await _until(lambda: len(fake.calls) == 1, "the first flight")
    await asyncio.sleep(0.1)  # [3 4] is full and [5]'s window has passed: both still wait
    assert [c.json["secrets_names"] for c in fake.calls] == [["s1", "s2"]]

    fake.gate.set()
    answers = [(r.status, await r.json()) for r in await asyncio.gather(*pending)]
    assert fake.max_in_flight == 1
    refused = {"detail": [{"msg": "Secrets not found: s1", "code": "resource_not_exists"}]}
    assert answers == [(200, None), (200, None), (400, refused), (200, None), (400, refused)]
    assert fake.secrets == set()


async def test_batches_naming_one_secret_never_fly_side_by_side(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    # The default policy lets batches fly beside each other, but never two that share a name.
    proxy = await make_proxy(max_batch=2)
    fake.secrets = {"s1", "s2", "s3", "s4"}
    fake.gate = asyncio.Event()
    lists = [["s1"], ["s2"], ["s1", "s3"], ["s4"], ["s3"]]
    pending = []
    for i, names in enumerate(lists):  # staggered so the arrival order is known
        body = {"secrets_names": names}
        pending.append(asyncio.ensure_future(proxy.post(SECRETS, json=body, headers=MEMBER)))
        if i < 2:  # each in the air before the next: the leader, then [s2] beside it
            await _until(lambda: len(fake.calls) == i + 1, f"call {i + 1}")  # noqa: B023
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    # [s1] leads; [s2] flies beside it. [s1 s3] and [s4] fill a batch that names s1, so it
    # waits for [s1]; [s3] waits behind it, first in first out.
    assert sorted(c.json["secrets_names"] for c in fake.calls) == [["s1"], ["s2"]]
    fake.gate.set()
    answers = [(r.status, await r.json()) for r in await asyncio.gather(*pending)]
    refused = {"detail": [{"msg": "Secrets not found: s1", "code": "resource_not_exists"}]}
    assert answers == [(200, None), (200, None), (400, refused), (200, None), (200, None)]
    assert fake.secrets == set()
    assert fake.max_in_flight >= 2 and fake.overlaps == 0


async def test_callers_behind_a_stuck_flight_get_503_at_max_wait_and_are_never_sent(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(window_ms=10, max_wait_ms=300)
    fake.secrets = {"s1", "s2"}
    fake.gate = asyncio.Event()
    first = asyncio.ensure_future(
        proxy.post(SECRETS, json={"secrets_names": ["s1"]}, headers=MEMBER)
    )
    await _until(lambda: len(fake.calls) == 1, "the first flight")
    # Naming the secret in the air: it may not fly beside it.
    behind = await proxy.post(SECRETS, json={"secrets_names": ["s2", "s1"]}, headers=MEMBER)

    assert behind.status == 503
    assert behind.headers["X-Proxy-Error"] == "upstream_busy"
    body = await behind.json()
    assert [d["code"] for d in body["detail"]] == ["upstream_busy"]
    assert "not sent" in body["detail"][0]["msg"]
    fake.gate.set()
    assert (await first).status == 200
    assert [c.json["secrets_names"] for c in fake.calls] == [["s1"]]
    assert fake.secrets == {"s2"}  # the refused caller's secret is untouched: a retry is safe


async def test_at_shutdown_a_caller_queued_behind_a_stuck_flight_gets_a_504(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(window_ms=10, drain_seconds=1.0)
    fake.gate = asyncio.Event()  # never set: the upstream is stuck
    stop = "/api/project/main/runs/stop"

    async def stop_run(name: str) -> tuple[int, dict[str, object], str]:
        body = {"runs_names": [name], "abort": False}
        async with proxy.post(stop, json=body, headers=MEMBER) as resp:
            return resp.status, await resp.json(), resp.headers.get("X-Proxy-Error", "")

    in_air = asyncio.ensure_future(stop_run("a"))
    await _until(lambda: len(fake.runs_calls()) == 1, "the first flight")
    queued = asyncio.ensure_future(stop_run("a"))  # the same run: waits behind the stuck flight
    await asyncio.sleep(0.05)
    await proxy.app.shutdown()  # what SIGTERM runs; the drain limit passes
    answers = await asyncio.wait_for(asyncio.gather(in_air, queued), 5)

    for status, body, marker in answers:
        assert (status, marker) == (504, "upstream_timeout")
        assert [d["code"] for d in body["detail"]] == ["upstream_timeout"]  # type: ignore[index]
    assert [c.json["runs_names"] for c in fake.runs_calls()] == [["a"]]  # sent once only
    # The deadline cut them short, not their clients: counted as such, never as disconnects.
    assert metric(proxy, "dstack_coalescer_client_disconnects_total", route="batched") == 0
    assert metric(proxy, "dstack_coalescer_client_disconnects_total", route="alone") == 0
    fake.gate.set()  # let the fake's handler finish, so its server closes at once
