"""Batch calls never queue behind pass-through connections and run as concurrently as their
callers would have: many keys against a slow fake upstream, with the pass-through pool held."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import orjson

from .conftest import STEADY, ProxyFactory
from .fakes import FakeUpstream

KEYS, PER_KEY = 200, 10


async def test_a_wide_burst_on_a_slow_upstream_is_answered_while_pass_through_is_saturated(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    # The pass-through pool holds 5 connections, and 5 never-ending downloads take them all
    # until every stop is answered. Each batch call takes 2 s: a proxy that queued its calls
    # behind those connections would never send them (504 at batch_timeout, or the hang guard),
    # and 200 calls sent 4 at a time would take 100 s. batch_timeout leaves room for a loaded
    # machine (3 s failed once under a full suite beside other work).
    proxy = await make_proxy(pool_size=5, batch_timeout=10.0, policy="adaptive")
    fake.runs_delay = 2.0
    base = str(proxy.make_url(""))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        streams = [await client.get(f"{base}/slow") for _ in range(5)]
        for stream in streams:  # each holds its upstream connection, mid-body
            assert await stream.content.readexactly(6) == b"first;"

        async def stop(key: int, i: int) -> tuple[int, bytes]:
            body = orjson.dumps({"runs_names": [f"r{key}-{i}"], "abort": False})
            async with client.post(
                f"{base}/api/project/p{key}/runs/stop",
                data=body,
                headers={"Authorization": "Bearer member", "Content-Type": "application/json"},
            ) as resp:
                return resp.status, await resp.read()

        burst = [stop(k, i) for k in range(KEYS) for i in range(PER_KEY)]
        answers = await asyncio.wait_for(asyncio.gather(*burst), 60)  # a hang guard only
        fake.release_stream.set()
        for stream in streams:
            stream.close()

    assert answers == [(200, b"null")] * (KEYS * PER_KEY)
    per_key = Counter(c.path for c in fake.runs_calls())
    assert len(per_key) == KEYS
    # Batched: pass-through would make 10 calls per key. (Usually 2: the first request alone, the
    # rest behind it; a loaded machine may deliver a straggler after that second call left.)
    assert max(per_key.values()) <= PER_KEY // 2
    assert sum(len(c.json["runs_names"]) for c in fake.runs_calls()) == KEYS * PER_KEY
    assert fake.max_in_flight > 100  # calls of different keys ran side by side


async def test_a_batch_naming_more_than_max_names_goes_as_several_calls(
    make_proxy: ProxyFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(max_names=3, **STEADY)
    fake.active_runs = {"r4"}
    delete = "/api/project/main/runs/delete"

    async def one(names: list[str]) -> tuple[int, bytes]:
        body = {"runs_names": names}
        async with proxy.post(delete, json=body, headers={"Authorization": "Bearer member"}) as r:
            return r.status, await r.read()

    lists = [["r0", "r1"], ["r2"], ["r3", "r4"], ["r5", "r6", "r7", "r8"], ["r9"]]
    answers = await asyncio.gather(*(one(n) for n in lists))
    refused = b'{"detail": [{"msg": "Cannot delete active runs: [\'r4\']", "code": "error"}]}'
    ok = (200, b"null")
    assert answers == [ok, ok, (400, refused), ok, ok]
    calls = [c.json["runs_names"] for c in fake.runs_calls()]
    # Cut in arrival order into calls of at most 3 names; a longer list goes alone, as sent.
    assert all(len(c) <= 3 or c in lists for c in calls), calls
    assert {n for c in calls for n in c} == {f"r{i}" for i in range(10)}
    # And batched all the same: the first list leads alone, and some call merges two lists.
    assert calls[0] == lists[0]
    assert any(sum(1 for part in lists if set(part) & set(c)) > 1 for c in calls), calls
