"""10 000 callers held at once across 100 projects and 1 000 tokens, against a recording
upstream that holds every call until all are waiting: each gets its own credential's answer,
no upstream call mixes keys, and nothing is left behind. The proxy runs as its own process
(`python -m proxy`), so its peak memory is its own (VmHWM), printed for the record."""

from __future__ import annotations

import asyncio
import json
import resource
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import aiohttp
import orjson

from harness.metrics import KEYS, PENDING, read_metrics
from harness.processes import ProxyProcess, SlowUpstream, proc_status

REQUESTS, PROJECTS, TOKENS = 10_000, 100, 1_000
DENIED = b'{"detail":[{"msg":"Access denied","code":null}]}'
IN_FLIGHT = "dstack_coalescer_requests_in_flight"


def _caller(i: int) -> tuple[str, str, str]:
    """Project, token and run name of caller `i`: 1 000 keys of 10 callers; every tenth
    token belongs to an outsider, whom the upstream refuses."""
    token = f"outsider-{i % TOKENS}" if i % TOKENS % 10 == 0 else f"member-{i % TOKENS}"
    return f"p{i % PROJECTS}", token, f"run-{i}"


def _post(url: str) -> object:
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


async def _hold_everyone(proxy: ProxyProcess, upstream: SlowUpstream) -> list[tuple[int, bytes]]:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True),
        timeout=aiohttp.ClientTimeout(total=300),
    ) as session:

        async def one(i: int) -> tuple[int, bytes]:
            project, token, name = _caller(i)
            async with session.post(
                f"{proxy.url}/api/project/{project}/runs/stop",
                data=orjson.dumps({"runs_names": [name], "abort": False}),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            ) as resp:
                return resp.status, await resp.read()

        callers = [asyncio.create_task(one(i)) for i in range(REQUESTS)]
        deadline = time.monotonic() + 240
        held = 0.0
        while held < REQUESTS:  # every caller waits in the proxy at the same time
            assert time.monotonic() < deadline, f"only {held} callers held"
            assert not any(c.done() for c in callers), "a caller was answered before release"
            await asyncio.sleep(0.5)
            # In flight, not pending in batches: each key's first caller leads it, passed
            # through as the key's flight, and the other nine wait behind it.
            held = (await asyncio.to_thread(read_metrics, proxy.admin_url))[IN_FLIGHT]
        await asyncio.to_thread(_post, upstream.url + "/_release")
        return await asyncio.gather(*callers)


def test_ten_thousand_held_callers_get_their_own_answers_and_leave_nothing_behind(
    tmp_path: Path,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * REQUESTS)), hard))
    started = time.monotonic()
    with (
        SlowUpstream(tmp_path / "upstream.log", delay=0.2) as upstream,
        ProxyProcess(
            upstream.url,
            tmp_path / "proxy.log",
            "--log-level",
            "warning",
            "--batch-timeout",
            "300",
            "--max-wait-ms",
            "305000",
        ) as proxy,
    ):
        assert proxy.pid is not None
        _post(upstream.url + "/_hold")
        answers = asyncio.run(_hold_everyone(proxy, upstream))
        calls = _get(upstream.url + "/_calls")
        after = read_metrics(proxy.admin_url)
        usage = proc_status(proxy.pid)
    elapsed = time.monotonic() - started
    print(
        f"\n{REQUESTS} held callers: peak RSS {usage['VmHWM'] / 1024:.1f} MiB, "
        f"{len(calls)} upstream calls, {elapsed:.1f} s in all"
    )

    expected = [
        (403, DENIED) if _caller(i)[1].startswith("outsider") else (200, b"null")
        for i in range(REQUESTS)
    ]
    assert answers == expected
    # Every upstream call carries one key's callers only, and each caller reached it once.
    seen: dict[int, int] = defaultdict(int)
    for call in calls:
        callers = [int(n.removeprefix("run-")) for n in call["body"]["runs_names"]]
        keys = {(f"/api/project/{p}/runs/stop", f"Bearer {t}") for p, t, _ in map(_caller, callers)}
        assert keys == {(call["path"], call["authorization"])}
        for i in callers:
            seen[i] += 1
    assert seen == dict.fromkeys(range(REQUESTS), 1)
    # Batched: one call per caller would be 10 000. A key's callers arrive over seconds (the
    # connection storm), so they can spread over a few windows: 1 400-2 100 calls were seen.
    assert len(calls) < REQUESTS // 2
    # Per-key state is gone once everyone is answered.
    assert after[PENDING] == 0
    assert after[KEYS] == 0
    assert after[IN_FLIGHT] == 0
