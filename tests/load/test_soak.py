"""A soak of mixed traffic through the proxy as its own process: batched stops (members and an
outsider), pass-through reads and uploads, requests the batcher bypasses, and clients that
leave mid-request. Every answer must be right, and after a warm-up nothing may grow: open file
descriptors (sockets included), threads, event-loop tasks, resident memory. The figures are
printed.

CI runs it for 20 s; `COALESCER_LONG=1` runs 5 minutes (or `COALESCER_SOAK_SECONDS`)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson

from harness.metrics import KEYS, PENDING, read_metrics
from harness.processes import ProxyProcess, SlowUpstream, proc_status
from tests.support.modes import LONG

SECONDS = float(os.environ.get("COALESCER_SOAK_SECONDS", "300" if LONG else "20"))
WORKERS = 40
DENIED = b'{"detail":[{"msg":"Access denied","code":null}]}'
UPLOAD = b"u" * (64 << 10)
# Growth from the warm-up sample to the end one that fails the test. A leak of one descriptor,
# thread or kilobyte per request would exceed these many times over.
FD_SLACK, THREAD_SLACK, TASK_SLACK, RSS_SLACK_KIB = 10, 4, 10, 8 << 10
TASKS = "dstack_coalescer_event_loop_tasks"


async def _one(session: aiohttp.ClientSession, base: str, n: int) -> str:
    """One request of the mix; returns its kind, or raises on a wrong answer."""
    kind = ("stop", "stop", "outsider", "read", "upload", "bypass", "leave")[n % 7]
    project = f"p{n % 4}"
    if kind in ("stop", "outsider", "bypass"):
        token = "outsider-0" if kind == "outsider" else f"member-{n % 5}"
        headers = {
            "Authorization": f"Bearer {token}",
            # text/plain: the batcher leaves it alone and it is passed through as it is.
            "Content-Type": "text/plain" if kind == "bypass" else "application/json",
        }
        body = orjson.dumps({"runs_names": [f"r{n}"], "abort": False})
        async with session.post(
            f"{base}/api/project/{project}/runs/stop", data=body, headers=headers
        ) as resp:
            got = (resp.status, await resp.read())
        assert got == ((403, DENIED) if kind == "outsider" else (200, b"null")), (kind, got)
    elif kind == "read":
        async with session.get(f"{base}/api/read/{n}?q={n}") as resp:
            assert (resp.status, await resp.json()) == (
                200,
                {"path": f"/api/read/{n}?q={n}", "size": 0},
            )
    elif kind == "upload":
        async with session.post(f"{base}/api/upload", data=UPLOAD) as resp:
            assert (await resp.json())["size"] == len(UPLOAD)
    else:  # a client that leaves before its answer
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.005):
                async with session.post(
                    f"{base}/api/project/{project}/runs/stop",
                    data=orjson.dumps({"runs_names": [f"gone{n}"], "abort": False}),
                    headers={
                        "Authorization": "Bearer member-0",
                        "Content-Type": "application/json",
                    },
                ) as resp:
                    await resp.read()
    return kind


async def _traffic(base: str, until: float, counter: itertools.count[int]) -> Counter[str]:
    done: Counter[str] = Counter()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True)
    ) as session:

        async def worker() -> None:
            while time.monotonic() < until:
                done[await _one(session, base, next(counter))] += 1

        await asyncio.gather(*(worker() for _ in range(WORKERS)))
    return done


def _quiet_sample(proxy: ProxyProcess) -> dict[str, int]:
    time.sleep(1.0)  # let closed connections go; the pool keeps its idle ones up to 4 s
    assert proxy.pid is not None
    tasks = read_metrics(proxy.admin_url)[TASKS]  # the scrape itself is one of them
    return {**proc_status(proxy.pid), "tasks": int(tasks)}


def test_mixed_traffic_soak_answers_right_and_grows_nothing(tmp_path: Path) -> None:
    counter = itertools.count()
    with (
        SlowUpstream(tmp_path / "upstream.log", delay=0.01) as upstream,
        ProxyProcess(upstream.url, tmp_path / "proxy.log", "--log-level", "warning") as proxy,
    ):
        warm_up = max(5.0, SECONDS / 4)
        first = asyncio.run(_traffic(proxy.url, time.monotonic() + warm_up, counter))
        warm = _quiet_sample(proxy)
        rest = asyncio.run(_traffic(proxy.url, time.monotonic() + SECONDS - warm_up, counter))
        end = _quiet_sample(proxy)
        after = read_metrics(proxy.admin_url)
    total = first + rest
    print(
        f"\nsoak {SECONDS:.0f} s, {sum(total.values())} requests {dict(total)}:\n"
        f"  after warm-up: fds {warm['fds']}, threads {warm['Threads']}, tasks {warm['tasks']}, "
        f"RSS {warm['VmRSS'] / 1024:.1f} MiB\n"
        f"  at the end:    fds {end['fds']}, threads {end['Threads']}, tasks {end['tasks']}, "
        f"RSS {end['VmRSS'] / 1024:.1f} MiB (peak {end['VmHWM'] / 1024:.1f} MiB)"
    )
    assert set(rest) == {"stop", "outsider", "read", "upload", "bypass", "leave"}
    assert end["fds"] <= warm["fds"] + FD_SLACK
    assert end["Threads"] <= warm["Threads"] + THREAD_SLACK
    assert end["tasks"] <= warm["tasks"] + TASK_SLACK
    assert end["VmRSS"] <= warm["VmRSS"] + RSS_SLACK_KIB
    assert after[PENDING] == 0
    assert after[KEYS] == 0
    assert after["dstack_coalescer_requests_in_flight"] == 0
