"""Batching with a recording fake upstream: how batches are formed, split and answered."""

from __future__ import annotations

import asyncio
import json
import math
import socket
from typing import Any

import aiohttp
import aiohttp.abc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from harness.bursts import burst, in_a_burst
from proxy.app import make_app
from proxy.batching.flight import MAX_CONCURRENT_CALLS
from proxy.batching.policy import Policy
from proxy.config import Config
from proxy.keys import STATE_KEY

from .conftest import STEADY, ProxyFactory, metric, serve_proxy
from .fakes import FakeUpstream

Client = TestClient[web.Request, web.Application]
MEMBER = {"Authorization": "Bearer member"}
STOP = "/api/project/main/runs/stop"
DELETE = "/api/project/main/runs/delete"
# Metric names in one place, as the metrics module spells them.
BYPASSES = "dstack_coalescer_batch_bypass_total"
BATCHED = "dstack_coalescer_batched_requests_total"
CALLS_SAVED = "dstack_coalescer_batch_calls_saved_total"
BISECTIONS = "dstack_coalescer_batch_bisections_total"


async def _stop_all(
    proxy: Client,
    names: list[str],
    headers: dict[str, str] = MEMBER,
    abort: bool = False,
    path: str = STOP,
) -> list[tuple[int, bytes]]:
    async def one(name: str) -> tuple[int, bytes]:
        body = (
            {"runs_names": [name], "abort": abort}
            if path.endswith("stop")
            else {"runs_names": [name]}
        )
        async with proxy.post(path, json=body, headers=headers) as resp:
            return resp.status, await resp.read()

    return await asyncio.gather(*(one(n) for n in names))


async def _raw_stop(proxy: Client, name: str) -> asyncio.StreamWriter:
    """A stop sent over a socket of its own, which the test can close before the answer."""
    body = b'{"runs_names": ["%s"], "abort": false}' % name.encode()
    _, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(
        b"POST " + STOP.encode() + b" HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer member\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    await writer.drain()
    return writer


async def _metric_settles(proxy: Client, name: str, **labels: str) -> float:
    """A flight's metrics are recorded once it has answered everyone: wait for them."""
    for _ in range(100):
        if value := metric(proxy, name, **labels):
            return value
        await asyncio.sleep(0.01)
    return 0.0


async def test_concurrent_stops_make_two_upstream_calls_the_first_as_it_came(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(**STEADY)
    names = [f"run-{i}" for i in range(40)]
    answers = await _stop_all(proxy, names)
    assert answers == [(200, b"null")] * 40
    alone, call = fake.runs_calls()
    (first,) = alone.json["runs_names"]
    assert "x-request-id" not in alone.headers  # passed through as it came
    assert call.json == {"runs_names": [n for n in names if n != first], "abort": False}
    assert call.headers["authorization"] == ["Bearer member"]
    assert call.headers["content-length"] == [str(len(call.body))]
    assert "x-request-id" in call.headers
    assert await _metric_settles(proxy, CALLS_SAVED, endpoint="runs/stop") == 38
    assert metric(proxy, BATCHED, endpoint="runs/stop") == 39


async def test_different_credentials_versions_and_flags_never_share_a_call(
    proxy: Client, fake: FakeUpstream
) -> None:
    fake.tokens["other"] = True
    await asyncio.gather(
        _stop_all(proxy, ["a1", "a2", "a3"]),
        _stop_all(proxy, ["b1", "b2", "b3"], headers={"Authorization": "Bearer other"}),
        _stop_all(proxy, ["c1", "c2", "c3"], headers={**MEMBER, "X-API-Version": "0.22.5"}),
        _stop_all(proxy, ["d1", "d2", "d3"], abort=True),
        _stop_all(proxy, ["e1", "e2", "e3"], path="/api/project/other/runs/stop"),
    )
    # Each key's first request leads it alone; the others of a key may share a call, and
    # never with another key's.
    groups = [{n[0] for n in c.json["runs_names"]} for c in fake.runs_calls()]
    assert all(len(g) == 1 for g in groups), groups
    assert sorted(n for c in fake.runs_calls() for n in c.json["runs_names"]) == sorted(
        f"{g}{i}" for g in "abcde" for i in (1, 2, 3)
    )
    assert metric(proxy, BATCHED, endpoint="runs/stop") >= 5  # the batch path ran
    for call in fake.runs_calls():
        token = "Bearer other" if call.json["runs_names"][0][0] == "b" else "Bearer member"
        assert call.headers["authorization"] == [token]


async def test_project_is_matched_as_dstack_matches_it(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(**STEADY)
    await asyncio.gather(
        _stop_all(proxy, ["a"], path="/api/project/main/runs/stop"),
        _stop_all(proxy, ["b"], path="/api/project/MAIN/runs/stop"),
        _stop_all(proxy, ["c"], path="/api/project/m%61in/runs/stop"),
        _stop_all(proxy, ["d"], path="/api/project/main/runs/stop"),
    )
    alone, call = fake.runs_calls()  # one key: the first alone, the other three together
    assert sorted(alone.json["runs_names"] + call.json["runs_names"]) == ["a", "b", "c", "d"]
    assert len(call.json["runs_names"]) == 3


async def test_equal_requests_share_one_member(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(**STEADY)
    answers = await _stop_all(proxy, ["first", "same", "same", "other", "same"])
    assert answers == [(200, b"null")] * 5
    alone, call = fake.runs_calls()
    assert (alone.json["runs_names"], call.json["runs_names"]) == (["first"], ["same", "other"])


async def test_one_active_run_fails_only_its_own_caller(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(**STEADY)
    names = [f"run-{i}" for i in range(17)]
    fake.active_runs = {"run-11"}
    answers = dict(zip(names, await _stop_all(proxy, names, path=DELETE), strict=True))
    assert answers.pop("run-11") == (
        400,
        json.dumps(
            {"detail": [{"msg": "Cannot delete active runs: ['run-11']", "code": "error"}]}
        ).encode(),
    )
    assert set(answers.values()) == {(200, b"null")}
    # The first caller alone; the other 16 in one batch call, the probe naming nothing (which
    # succeeds: the refusal is about a name), then two calls per level of the bisection:
    # 1 + 2 + 2·log2(16).
    assert len(fake.runs_calls()) <= 1 + 2 + 2 * 4
    assert [c.json["runs_names"] for c in fake.runs_calls()].count([]) <= 1
    # Callers are answered before the flight ends; its metrics are recorded when it does.
    assert await _metric_settles(proxy, BISECTIONS, endpoint="runs/delete") >= 4


async def test_several_failing_callers_each_get_their_own_answer(
    proxy: Client, fake: FakeUpstream
) -> None:
    names = [f"r{i}" for i in range(10)]
    fake.active_runs = {"r0", "r5", "r9"}
    answers = dict(zip(names, await _stop_all(proxy, names, path=DELETE), strict=True))
    for name in names:
        status, body = answers[name]
        if name in fake.active_runs:
            assert status == 400
            assert json.loads(body)["detail"][0]["msg"] == f"Cannot delete active runs: ['{name}']"
        else:
            assert (status, body) == (200, b"null")


async def test_key_wide_refusal_is_fanned_out_with_one_call(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(**STEADY)
    answers = await _stop_all(
        proxy, [f"r{i}" for i in range(8)], headers={"Authorization": "Bearer outsider"}
    )
    assert {a[0] for a in answers} == {403}
    assert {json.loads(a[1])["detail"]["msg"] for a in answers} == {"Access denied"}
    assert [len(c.json["runs_names"]) for c in fake.runs_calls()] == [1, 7]


async def test_upstream_5xx_reaches_every_caller_without_resending(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(**STEADY)
    fake.status_override = 500
    answers = await _stop_all(proxy, [f"r{i}" for i in range(6)], path=DELETE)
    assert {a[0] for a in answers} == {500}
    # The first alone; the batch of five, then the probe naming nothing, which fails too: the
    # server's own failure, never resent to the names.
    assert [len(c.json["runs_names"]) for c in fake.runs_calls()] == [1, 5, 0]


async def test_upstream_timeout_gives_every_caller_504_without_resending(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(batch_timeout=0.5, read_timeout=0.5, **STEADY)
    fake.gate = asyncio.Event()  # never set: the upstream hangs
    answers = await _stop_all(proxy, [f"r{i}" for i in range(5)])
    assert {a[0] for a in answers} == {504}
    assert [len(c.json["runs_names"]) for c in fake.runs_calls()] == [1, 4]


@pytest.mark.parametrize(
    "body, content_type",
    [
        (b'{"runs_names": ["a"], "abort": false, "extra": 1}', "application/json"),
        (b'{"runs_names": ["a"]}', "application/json"),
        (b'{"runs_names": [], "abort": false}', "application/json"),
        (b'{"runs_names": "a", "abort": false}', "application/json"),
        (b'{"runs_names": ["a"], "abort": "yes"}', "application/json"),
        (b'{"runs_names": ["a"], "abort": false', "application/json"),
        (b'{"runs_names": ["a"], "abort": false}', "text/plain"),
    ],
)
async def test_non_canonical_bodies_pass_through_byte_for_byte(
    proxy: Client, fake: FakeUpstream, body: bytes, content_type: str
) -> None:
    await proxy.post(STOP, data=body, headers={**MEMBER, "Content-Type": content_type})
    (call,) = fake.runs_calls() or [c for c in fake.calls if c.path == STOP]
    assert call.body == body
    assert call.headers["content-type"] == [content_type]


async def test_requests_without_a_credential_or_with_a_query_pass_through(
    proxy: Client, fake: FakeUpstream
) -> None:
    await asyncio.gather(
        proxy.post(STOP, json={"runs_names": ["a"], "abort": False}),
        proxy.post(STOP + "?x=1", json={"runs_names": ["b"], "abort": False}, headers=MEMBER),
    )
    assert len([c for c in fake.calls if c.path.startswith(STOP)]) == 2
    assert metric(proxy, BYPASSES, reason="credentials") == 1
    assert metric(proxy, BYPASSES, reason="query") == 1


async def test_overload_passes_requests_through_instead_of_rejecting(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(max_pending_per_key=3, **STEADY)
    answers = await _stop_all(proxy, [f"r{i}" for i in range(8)])
    assert answers == [(200, b"null")] * 8
    # The first leads its key and takes a place like any held request; two more are held.
    assert metric(proxy, BYPASSES, reason="key_limit") == 5
    assert metric(proxy, BYPASSES, reason="alone") == 1
    assert sorted(len(c.json["runs_names"]) for c in fake.runs_calls()) == [1] * 6 + [2]


async def test_a_caller_that_leaves_does_not_cancel_the_batch(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(quiet_ms=300, window_ms=600)
    await _stop_all(proxy, ["w1", "w2"])  # a burst: for a while the key's requests gather
    fake.calls.clear()
    writer = await _raw_stop(proxy, "leaver")
    await asyncio.sleep(0.05)
    stayer = asyncio.ensure_future(_stop_all(proxy, ["stayer"]))
    await asyncio.sleep(0.05)
    writer.close()  # the client disconnects while its batch gathers
    await writer.wait_closed()
    assert await stayer == [(200, b"null")]
    (call,) = fake.runs_calls()
    assert call.json["runs_names"] == ["leaver", "stayer"]  # accepted means executed
    await asyncio.sleep(0.05)  # the leaver's handler finishes with the batch
    assert metric(proxy, "dstack_coalescer_client_disconnects_total", route="batched") == 1


async def test_shutdown_flushes_open_windows_at_once(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(window_ms=60_000, quiet_ms=60_000, max_wait_ms=60_000)
    fake.gate = asyncio.Event()
    first = asyncio.ensure_future(_stop_all(proxy, ["w"]))  # leads the key; held upstream
    while not fake.runs_calls():
        await asyncio.sleep(0.01)
    callers = asyncio.ensure_future(_stop_all(proxy, ["x", "y", "z"]))
    await asyncio.sleep(0.1)
    assert len(fake.runs_calls()) == 1  # x, y, z gather: their arrivals have not paused long
    fake.gate.set()
    assert await first == [(200, b"null")]
    fake.calls.clear()
    await proxy.app.shutdown()  # what SIGTERM runs: on_shutdown flushes every window
    assert await asyncio.wait_for(callers, 5) == [(200, b"null")] * 3
    (call,) = fake.runs_calls()
    assert call.json["runs_names"] == ["x", "y", "z"]
    assert (
        metric(proxy, "dstack_coalescer_batch_flushes_total", endpoint="runs/stop", reason="close")
        == 1
    )


async def test_shadow_mode_forwards_singly_and_counts_the_batch_it_would_form(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(mode="shadow", **STEADY)
    answers = await _stop_all(proxy, ["a", "b", "c"])
    assert answers == [(200, b"null")] * 3
    assert len(fake.runs_calls()) == 3
    await asyncio.sleep(0.5)  # the shadow batch (a quiet gap of 250 ms) closes after the answers
    # What the shipped policy would send: the first alone, the other two in one call.
    assert metric(proxy, "dstack_coalescer_shadow_batches_total", endpoint="runs/stop") == 2


async def test_mode_off_is_pure_pass_through(make_proxy: ProxyFactory, fake: FakeUpstream) -> None:
    proxy = await make_proxy(mode="off")
    await _stop_all(proxy, ["a", "b", "c"])
    assert len(fake.runs_calls()) == 3
    assert metric(proxy, BATCHED, endpoint="runs/stop") == 0


async def test_flight_in_progress_collects_the_next_batch_under_policy_window(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(policy="window", window_ms=10)
    fake.gate = asyncio.Event()
    first = asyncio.ensure_future(_stop_all(proxy, ["a", "b"]))
    while len(fake.runs_calls()) < 1:
        await asyncio.sleep(0.01)
    second = asyncio.ensure_future(_stop_all(proxy, ["c", "d", "e"]))
    await asyncio.sleep(0.1)  # well past the window: still held behind the flight
    assert len(fake.runs_calls()) == 1
    fake.gate.set()
    await asyncio.gather(first, second)
    assert [c.json["runs_names"] for c in fake.runs_calls()] == [["a", "b"], ["c", "d", "e"]]


async def test_a_lone_request_on_an_idle_key_goes_as_it_came(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    """Policy adaptive (the default): a request whose key is idle is the key's flight itself,
    passed through unchanged; those arriving meanwhile are batched behind it."""
    proxy = await make_proxy(policy="adaptive", window_ms=10)
    fake.gate = asyncio.Event()
    odd = b'{ "abort": false,   "runs_names": ["lone"] }'
    headers = {**MEMBER, "Content-Type": "application/json", "User-Agent": "legacy-ui"}
    lone = asyncio.ensure_future(proxy.post(STOP, data=odd, headers=headers))
    while len(fake.runs_calls()) < 1:
        await asyncio.sleep(0.01)
    followers = asyncio.ensure_future(_stop_all(proxy, ["b", "c", "d"]))
    await asyncio.sleep(0.1)  # well past the window: held behind the lone request's call
    assert len(fake.runs_calls()) == 1
    fake.gate.set()
    resp = await lone
    assert (resp.status, await resp.read()) == (200, b"null")
    assert await followers == [(200, b"null")] * 3
    first, second = fake.runs_calls()
    assert first.body == odd  # byte for byte: never parsed and rendered again
    assert first.headers["user-agent"] == ["legacy-ui"]
    assert "x-request-id" not in first.headers  # a pass-through adds none
    assert second.json == {"runs_names": ["b", "c", "d"], "abort": False}
    assert metric(proxy, BYPASSES, reason="alone") == 1
    assert metric(proxy, BATCHED, endpoint="runs/stop") == 3


async def test_under_the_shipped_policy_followers_fly_beside_the_lone_request_not_behind_it(
    proxy: Client, fake: FakeUpstream
) -> None:
    """Policy quiet (the default): the lone request goes as it came, and those arriving during
    its call fly beside it once their arrivals pause, naming none of its runs: on dstack
    0.18.40, where a stop takes 0.23 s, waiting for it would double the burst's time."""
    fake.gate = asyncio.Event()
    odd = b'{ "abort": false,   "runs_names": ["lone"] }'
    headers = {**MEMBER, "Content-Type": "application/json", "User-Agent": "legacy-ui"}
    lone = asyncio.ensure_future(proxy.post(STOP, data=odd, headers=headers))
    while len(fake.runs_calls()) < 1:
        await asyncio.sleep(0.01)
    followers = asyncio.ensure_future(_stop_all(proxy, ["b", "c", "d"]))
    while len(fake.runs_calls()) < 2:  # beside it, while its call is still in the air
        await asyncio.sleep(0.01)
    assert not lone.done()
    fake.gate.set()
    resp = await lone
    assert (resp.status, await resp.read()) == (200, b"null")
    assert await followers == [(200, b"null")] * 3
    first, second = fake.runs_calls()
    assert first.body == odd and "x-request-id" not in first.headers
    assert second.json == {"runs_names": ["b", "c", "d"], "abort": False}
    assert metric(proxy, BYPASSES, reason="alone") == 1
    assert metric(proxy, BATCHED, endpoint="runs/stop") == 3


async def test_a_lone_request_whose_client_leaves_is_still_sent_and_frees_its_key(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(policy="adaptive", window_ms=10)
    fake.gate = asyncio.Event()
    writer = await _raw_stop(proxy, "leaver")
    while len(fake.runs_calls()) < 1:
        await asyncio.sleep(0.01)
    writer.close()  # gone while its call is in the air
    await writer.wait_closed()
    stayer = asyncio.ensure_future(_stop_all(proxy, ["stayer"]))
    await asyncio.sleep(0.05)
    fake.gate.set()
    assert await stayer == [(200, b"null")]
    assert [c.json["runs_names"] for c in fake.runs_calls()] == [["leaver"], ["stayer"]]


class _FailOnceResolver(aiohttp.abc.AbstractResolver):
    """Resolves `localhost` to loopback, but fails the first look-up: a connection that could
    not even be opened, so nothing reached the upstream."""

    def __init__(self) -> None:
        self.lookups = 0

    async def resolve(
        self, host: str, port: int = 0, family: int = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        self.lookups += 1
        if self.lookups == 1:
            raise OSError("temporary failure in name resolution")
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
        ]

    async def close(self) -> None:
        pass


async def test_a_batch_call_that_could_not_connect_is_sent_once_more(
    aiohttp_client: AiohttpClient, upstream_server: Any, fake: FakeUpstream
) -> None:
    resolver = _FailOnceResolver()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False),
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:
        config = Config(upstream=f"http://localhost:{upstream_server.port}", policy=Policy.WINDOW)
        proxy = await serve_proxy(aiohttp_client, make_app(config, batch_session=session))
        answers = await _stop_all(proxy, ["a", "b"])
    assert answers == [(200, b"null")] * 2
    assert resolver.lookups == 2
    assert len(fake.runs_calls()) == 1


async def test_absent_and_empty_api_versions_never_share_a_call(
    proxy: Client, fake: FakeUpstream
) -> None:
    # dstack skips the version check without the header but refuses an empty one (400).
    await asyncio.gather(
        _stop_all(proxy, ["a1", "a2", "a3"], headers={**MEMBER, "X-API-Version": ""}),
        _stop_all(proxy, ["b1", "b2", "b3"]),
    )
    groups = [{n[0] for n in c.json["runs_names"]} for c in fake.runs_calls()]
    assert all(len(g) == 1 for g in groups), groups
    assert metric(proxy, BATCHED, endpoint="runs/stop") >= 2  # the batch path ran


async def test_a_connection_header_naming_headers_means_pass_through(
    proxy: Client, fake: FakeUpstream
) -> None:
    # Connection: Authorization would strip the token from a batch call built for it.
    answers = await asyncio.gather(
        _stop_all(proxy, ["a"], headers={**MEMBER, "Connection": "keep-alive, Authorization"}),
        _stop_all(proxy, ["b", "c", "d"]),
    )
    assert answers[1] == [(200, b"null")] * 3
    calls = [c.json["runs_names"] for c in fake.runs_calls()]
    assert ["a"] in calls and all(c == ["a"] or "a" not in c for c in calls)
    assert metric(proxy, BYPASSES, reason="headers") == 1


@pytest.mark.parametrize("callers", [3, 16, 40])
async def test_when_every_caller_fails_resending_stays_bounded(
    proxy: Client, fake: FakeUpstream, callers: int
) -> None:
    # Every run still active (stops lost to the upstream race, docs/dstack-api.md, "The stop race"):
    # plain bisection would cost 2N-1 calls; without the proxy it would be N.
    names = [f"r{i}" for i in range(callers)]
    fake.active_runs = set(names)
    answers = dict(zip(names, await _stop_all(proxy, names, path=DELETE), strict=True))
    for name, (status, body) in answers.items():
        assert status == 400
        assert json.loads(body)["detail"][0]["msg"] == f"Cannot delete active runs: ['{name}']"
    assert len(fake.runs_calls()) <= 2 + callers + 2 * math.ceil(math.log2(callers))
    assert fake.max_in_flight <= MAX_CONCURRENT_CALLS


async def test_secrets_named_twice_are_deleted_in_arrival_order_never_in_one_call(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    # secrets/delete refuses unknown names, so the second delete of a secret must fail, as it
    # would if the requests had been sent one after the other in the order they arrived.
    proxy = await make_proxy(window_ms=200)
    fake.secrets = {"s1", "s2", "s3", "s4"}
    path = "/api/project/main/secrets/delete"
    lists = [["s1", "s2"], ["s2", "s3"], ["s1"], ["s4"], ["s4"]]
    pending = []
    for names in lists:  # staggered so the arrival order is known
        pending.append(
            asyncio.ensure_future(proxy.post(path, json={"secrets_names": names}, headers=MEMBER))
        )
        await asyncio.sleep(0.01)
    answers = [(r.status, await r.json()) for r in await asyncio.gather(*pending)]
    assert [status for status, _ in answers] == [200, 400, 400, 200, 400]
    assert answers[1][1]["detail"][0]["msg"] == "Secrets not found: s2"
    assert answers[2][1]["detail"][0]["msg"] == "Secrets not found: s1"
    assert answers[4][1]["detail"][0]["msg"] == "Secrets not found: s4"
    assert fake.secrets == {"s3"}  # all or nothing: the refused call deleted none
    for call in fake.calls:
        names = call.json["secrets_names"]
        assert len(names) == len(set(names))


async def test_ordered_rounds_stay_within_the_call_budget(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    # Pairs of callers share a secret, and each also names one that does not exist: every
    # caller fails alone, over two ordered rounds.
    proxy = await make_proxy(window_ms=200)
    callers = 16
    fake.secrets = {f"p{i // 2}" for i in range(callers)}
    path = "/api/project/main/secrets/delete"
    answers = await asyncio.gather(
        *(
            proxy.post(path, json={"secrets_names": [f"p{i // 2}", f"missing{i}"]}, headers=MEMBER)
            for i in range(callers)
        )
    )
    assert {a.status for a in answers} == {400}
    assert len(fake.calls) <= 2 + callers + 2 * math.ceil(math.log2(callers))


async def test_requests_leading_idle_keys_stay_within_the_caps(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    # Every new token makes a new idle key, and a request on an idle key leads it. Leaders are
    # held requests like any other: past max_pending they take the bounded pass-through path
    # (pool_size), so 200 tokens never open 200 upstream connections (before: 200 at once).
    proxy = await make_proxy(max_pending=2, pool_size=2, connect_timeout=1.0)
    fake.runs_delay = 0.3
    fake.tokens.update({f"t{i}": True for i in range(0, 200, 2)})  # half of them are valid

    async def stop(i: int) -> tuple[int, bytes, str]:
        body = {"runs_names": [f"r{i}"], "abort": False}
        async with proxy.post(STOP, json=body, headers={"Authorization": f"Bearer t{i}"}) as r:
            return r.status, await r.read(), r.headers.get("X-Proxy-Error", "")

    answers = await asyncio.gather(*(stop(i) for i in range(200)))
    assert fake.max_in_flight <= 2 + 2  # leaders within max_pending, the rest within pool_size
    invalid = json.dumps({"detail": {"msg": "Invalid token", "code": None}}).encode()
    for i, (status, body, marker) in enumerate(answers):
        if status == 503:  # the pass-through pool stayed full for connect_timeout
            assert marker == "upstream_busy"
            assert json.loads(body)["detail"][0]["code"] == "upstream_busy"
        else:  # its own answer: dstack's, for its own token
            assert (status, body) == ((200, b"null") if i % 2 == 0 else (403, invalid))
    assert metric(proxy, BYPASSES, reason="alone") >= 2
    assert metric(proxy, BYPASSES, reason="pending_limit") >= 150


async def test_the_real_server_suites_bursts_take_the_batch_path_under_the_shipped_defaults(
    proxy: Client, fake: FakeUpstream
) -> None:
    """Guard: the fuzz (tests/e2e/test_hostile.py) and the merge-equivalence property send their
    requests with these helpers so that they are batched; a change of default policy that made
    them lead idle keys alone, as they came, would hollow those suites out. It fails here."""
    base = str(proxy.make_url(""))
    ghost = [b'{"runs_names": ["g%d"], "abort": false}' % i for i in range(3)]
    body = b'{"runs_names": ["fuzzed"], "abort": false}'
    status, _, answer = await in_a_burst(base, STOP, body, ghost, "member")
    assert (status, answer) == (200, b"null")
    assert metric(proxy, BYPASSES, reason="alone") == 1  # the first companion only
    assert metric(proxy, BATCHED, endpoint="runs/stop") == 3  # the second, it, and the third
    assert ["fuzzed", "g2"] in [sorted(c.json["runs_names"]) for c in fake.runs_calls()]
    # All at once, as the merge-equivalence property sends a key's callers: all but the
    # first are batched.
    await burst(base, STOP, [{"runs_names": [f"m{i}"], "abort": True} for i in range(5)], "member")
    assert metric(proxy, BATCHED, endpoint="runs/stop") >= 3 + 4


async def test_a_client_that_leaves_mid_body_is_counted_and_nothing_goes_upstream(
    proxy: Client, fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    _reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(
        b"POST /api/project/p/runs/stop HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer member\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b'{"runs_names": ['
    )
    await writer.drain()
    left = ("dstack_coalescer_client_disconnects_total", {"route": "batched"})
    async with asyncio.timeout(5):
        while proxy.app[STATE_KEY].in_progress == 0:  # its handler is reading the body
            await asyncio.sleep(0.01)
        writer.close()
        while metric(proxy, left[0], **left[1]) == 0:
            await asyncio.sleep(0.01)
    assert fake.calls == []
    # It was a client leaving, not an error of the proxy's (aiohttp logged one with a traceback).
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
