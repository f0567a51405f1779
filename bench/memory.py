"""Memory: the proxy's peak resident set (VmHWM) while it holds 10 000 one-run stops across 100
projects, in front of an upstream that answers only when told to (`slow_upstream.py`).

    .venv/bin/python -m bench.memory [--projects 100] [--per-project 100]

The proxy runs its default configuration except `--batch-timeout 300`, so that calls held on
purpose do not time out while the last clients are still connecting. Every request is then
answered, and must come back 200 `null`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tests.support.processes import Process, ProxyProcess, find_free_port

from .tools import metric, peak_rss_mb

CONNECTING = 200  # connections opened at once: stays inside the listen backlog


@dataclass
class MemoryResults:
    requests: int
    projects: int
    held: int  # proxy_requests_in_flight once every request was sent
    upstream_calls: int  # calls the slow upstream was holding then
    idle_rss_mb: float
    held_rss_mb: float  # VmRSS while every request is held
    peak_rss_mb: float  # VmHWM over the whole run, answers included
    answered_ok: int  # 200 `null` after the release
    seconds_to_hold: float


class SlowUpstream(Process):
    def __init__(self, log: Path) -> None:
        port = find_free_port()
        self.url = f"http://127.0.0.1:{port}"
        super().__init__(
            [sys.executable, "-m", "bench.slow_upstream", str(port)], f"{self.url}/healthcheck", log
        )


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
    proxy: ProxyProcess, upstream: SlowUpstream, projects: int, per_project: int
) -> tuple[int, int, float, float, int]:
    parts = urlsplit(proxy.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    gate = asyncio.Semaphore(CONNECTING)
    total = projects * per_project
    started = time.perf_counter()
    tasks = [
        asyncio.create_task(_one(host, port, f"p{p}", f"r{p}-{i}", gate))
        for p in range(projects)
        for i in range(per_project)
    ]
    held = 0
    deadline = time.monotonic() + 180
    while held < total and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        held = int(await asyncio.to_thread(metric, proxy.admin_url, "proxy_requests_in_flight"))
    seconds = time.perf_counter() - started
    await asyncio.sleep(1)  # let the batches settle into their calls
    held_rss = peak_rss_mb(proxy.pid)[1] if proxy.pid else float("nan")
    stats = await asyncio.to_thread(urllib.request.urlopen, f"{upstream.url}/_stats")
    calls = int(json.loads(stats.read())["calls"])
    await asyncio.to_thread(urllib.request.urlopen, f"{upstream.url}/_release")
    ok = sum(await asyncio.gather(*tasks))
    return held, calls, seconds, held_rss, ok


def run(workdir: Path, projects: int, per_project: int) -> MemoryResults:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = projects * per_project + 1000
    if soft < need:  # the proxy inherits it: one socket per client, both ends
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    with (
        SlowUpstream(workdir / "slow.log") as upstream,
        ProxyProcess(upstream.url, workdir / "proxy.log", "--batch-timeout", "300") as proxy,
    ):
        assert proxy.pid is not None
        idle, _ = peak_rss_mb(proxy.pid)
        held, calls, seconds, held_rss, ok = asyncio.run(
            _hold(proxy, upstream, projects, per_project)
        )
        peak, _ = peak_rss_mb(proxy.pid)
    result = MemoryResults(
        projects * per_project, projects, held, calls, idle, held_rss, peak, ok, seconds
    )
    print(
        f"{result.held} of {result.requests} held ({result.upstream_calls} upstream calls); "
        f"peak RSS {result.peak_rss_mb:.1f} MB (idle {result.idle_rss_mb:.1f}, "
        f"holding {result.held_rss_mb:.1f}); "
        f"{result.answered_ok} answered 200 null",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=100)
    parser.add_argument("--per-project", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        results = run(Path(tmp), args.projects, args.per_project)
    print(json.dumps(asdict(results)))


if __name__ == "__main__":
    main()
