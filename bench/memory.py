"""Memory: the proxy's peak resident set (VmHWM) while it holds 10 000 one-run stops across 100
projects, in front of an upstream that answers only when told to (the recording
`slow_upstream.py`, its calls held); then the
same for the bare aiohttp pass-through, the floor of the stack.

    .venv/bin/python -m bench.memory [--projects 100] [--per-project 100] [--loops uvloop,asyncio]

The proxy runs its default configuration except `--batch-timeout 300 --max-wait-ms 305000`, so
that calls held on purpose neither time out nor are refused while the last clients connect.
Every request is then answered, and must come back 200 `null`. Both run on each event loop of
`--loops` in turn (both by default); a run on another loop than the process's default (the
proxy's: uvloop; aiohttp's: asyncio) is reported as, e.g., "proxy on asyncio", as in the
pass-through benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from harness.metrics import total
from harness.processes import ProxyProcess, SlowUpstream

from .passthrough import BarePassthrough
from .tools import peak_rss_mb

TARGETS = ("proxy", "bare aiohttp")
LOOPS = ("uvloop", "asyncio")
DEFAULT_LOOP = {"proxy": "uvloop", "bare aiohttp": "asyncio"}
HOLD_FLAGS = ("--batch-timeout", "300", "--max-wait-ms", "305000")
CONNECTING = 200  # connections opened at once: stays inside the listen backlog


@dataclass
class MemoryResults:
    target: str
    requests: int
    projects: int
    # dstack_coalescer_requests_in_flight (bare: client sockets) once every request was sent
    held: int
    upstream_calls: int  # calls the slow upstream was holding then
    idle_rss_mb: float
    held_rss_mb: float  # VmRSS while every request is held
    peak_rss_mb: float  # VmHWM over the whole run, answers included
    answered_ok: int  # 200 `null` after the release
    seconds_to_hold: float


def _post(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=30).close()


async def _one(host: str, port: int, project: str, name: str, gate: asyncio.Semaphore) -> bool:
    body = json.dumps({"runs_names": [name], "abort": False}).encode()
    head = (
        f"POST /api/project/{project}/runs/stop HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Authorization: Bearer bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    async with gate:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(head + body)
        await writer.drain()
    answer = await reader.read()  # the proxy closes after its answer (Connection: close)
    writer.close()
    return answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\nnull")


async def _hold(
    url: str, held: Callable[[], int], pid: int, upstream: SlowUpstream, projects: int, each: int
) -> tuple[int, int, float, float, int]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    gate = asyncio.Semaphore(CONNECTING)
    total = projects * each
    started = time.perf_counter()
    tasks = [
        asyncio.create_task(_one(host, port, f"p{p}", f"r{p}-{i}", gate))
        for p in range(projects)
        for i in range(each)
    ]
    holding = 0
    deadline = time.monotonic() + 180
    while holding < total and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        holding = await asyncio.to_thread(held)
    seconds = time.perf_counter() - started
    await asyncio.sleep(1)  # let the batches settle into their calls
    held_rss = peak_rss_mb(pid)[1]
    seen = await asyncio.to_thread(urllib.request.urlopen, f"{upstream.url}/_calls")
    calls = len(json.loads(seen.read()))
    await asyncio.to_thread(_post, f"{upstream.url}/_release")
    ok = sum(await asyncio.gather(*tasks))
    return holding, calls, seconds, held_rss, ok


def _in_flight(admin_url: str) -> Callable[[], int]:
    """Requests the proxy is handling, from its own gauge."""
    return lambda: int(total(admin_url, "dstack_coalescer_requests_in_flight"))


def _client_sockets(pid: int, before: int) -> Callable[[], int]:
    """Sockets `pid` opened since it had `before` file descriptors: one per client held."""
    return lambda: len(os.listdir(f"/proc/{pid}/fd")) - before


def measure(workdir: Path, target: str, projects: int, each: int, loop: str) -> MemoryResults:
    """Hold `projects * each` requests in the proxy, or in the bare pass-through, on `loop`."""
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(SlowUpstream(workdir / f"slow-{target}-{loop}.log"))
        _post(f"{upstream.url}/_hold")
        server = stack.enter_context(
            ProxyProcess(
                upstream.url, workdir / f"proxy-{loop}.log", *HOLD_FLAGS, "--event-loop", loop
            )
            if target == "proxy"
            else BarePassthrough(upstream.url, workdir / f"bare-{loop}.log", loop)
        )
        assert server.pid is not None
        held = (
            _in_flight(server.admin_url)
            if isinstance(server, ProxyProcess)
            else _client_sockets(server.pid, len(os.listdir(f"/proc/{server.pid}/fd")))
        )
        idle, _ = peak_rss_mb(server.pid)
        holding, calls, seconds, held_rss, ok = asyncio.run(
            _hold(server.url, held, server.pid, upstream, projects, each)
        )
        peak, _ = peak_rss_mb(server.pid)
    name = target if loop == DEFAULT_LOOP[target] else f"{target} on {loop}"
    result = MemoryResults(
        name, projects * each, projects, holding, calls, idle, held_rss, peak, ok, seconds
    )
    print(
        f"{name}: {result.held} of {result.requests} held ({result.upstream_calls} upstream "
        f"calls); peak RSS {result.peak_rss_mb:.1f} MB (idle {result.idle_rss_mb:.1f}, "
        f"holding {result.held_rss_mb:.1f}); {result.answered_ok} answered 200 null",
        flush=True,
    )
    return result


def run(
    workdir: Path, projects: int, each: int, loops: tuple[str, ...] = LOOPS
) -> list[MemoryResults]:
    """The proxy, then the bare aiohttp pass-through (the floor of the stack), each holding;
    on each of `loops` in turn."""
    workdir.mkdir(parents=True, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * projects * each + 1000
    if soft < need:  # the children inherit it: one socket per client in each
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    return [measure(workdir, t, projects, each, loop) for loop in loops for t in TARGETS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=100)
    parser.add_argument("--per-project", type=int, default=100)
    parser.add_argument("--loops", default=",".join(LOOPS), help="comma-separated event loops")
    args = parser.parse_args()
    loops = tuple(args.loops.split(","))
    if unknown := set(loops) - set(LOOPS):
        parser.error(f"unknown loop(s): {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        results = run(Path(tmp), args.projects, args.per_project, loops)
    print(json.dumps([asdict(r) for r in results]))


if __name__ == "__main__":
    main()
