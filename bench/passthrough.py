"""Pass-through at the floor of its stack: the proxy (default configuration: logging, metrics and
header policy on, uvloop; once more on asyncio's loop, and once with `--mode off`, no
batchable-route matching), a bare aiohttp pass-through (on asyncio's loop, the reference, and on
uvloop) and nginx, each ONE process pinned to the same core, in front of the same fast
upstream (nginx answering from memory). wrk -t1 -c32 with a small JSON POST for requests/s (and
the process's CPU time per request), wrk -c1 for the unloaded latency, and a 1 MiB download.

    .venv/bin/python -m bench.passthrough [--seconds 3] [--rounds 4]

On two or more cores the system under test runs alone on core 1; wrk and the upstream share
core 0, so all are compared on equal CPU, none of it taken by the load generator.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import nginx
from harness.processes import Process, ProxyProcess, find_free_port

from .tools import cpu_seconds, pin
from .wrk import POST_PATH, POST_SCRIPT, WrkResult, wrk

SUT_CPU, LOAD_CPU = 1, 0


@dataclass
class PassthroughResults:
    seconds: int
    rounds: int
    pinned: bool
    throughput: dict[str, list[float]]  # requests/s per round; "direct" = wrk to the upstream
    cpu_us: dict[str, list[float]]  # CPU time of the process per request, per round
    latency: dict[str, WrkResult]  # one connection, one request at a time
    download: dict[str, WrkResult]  # GET of 1 MiB, one connection


class BarePassthrough(Process):
    """`bare_passthrough.py` in front of `upstream`."""

    def __init__(self, upstream: str, log: Path, loop: str = "asyncio") -> None:
        port = find_free_port()
        self.url = f"http://127.0.0.1:{port}"
        super().__init__(
            [sys.executable, "-m", "bench.bare_passthrough", upstream, str(port), loop],
            f"{self.url}/healthcheck",
            log,
        )


def _pin(proc: Process, cpu: int) -> None:
    assert proc.pid is not None
    pin(proc.pid, {cpu})


def run(workdir: Path, seconds: int, rounds: int) -> PassthroughResults:
    pinned = (os.cpu_count() or 1) >= 2
    cpu = LOAD_CPU if pinned else None
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "post.lua"
    script.write_text(POST_SCRIPT)
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(nginx.fast_upstream(workdir / "upstream"))
        suts: dict[str, ProxyProcess | BarePassthrough | nginx.Nginx] = {
            "proxy": ProxyProcess(upstream.url, workdir / "proxy.log"),
            "proxy on asyncio": ProxyProcess(
                upstream.url, workdir / "proxy-asyncio.log", "--event-loop", "asyncio"
            ),
            "proxy, batching off": ProxyProcess(
                upstream.url, workdir / "proxy-off.log", "--mode", "off"
            ),
            "bare aiohttp": BarePassthrough(upstream.url, workdir / "bare.log"),
            "bare aiohttp on uvloop": BarePassthrough(
                upstream.url, workdir / "bare-uvloop.log", "uvloop"
            ),
            "nginx": nginx.passthrough(workdir / "nginx", upstream.url),
        }
        for proc in suts.values():
            stack.enter_context(proc)
        if pinned:
            _pin(upstream, LOAD_CPU)
            for proc in suts.values():
                _pin(proc, SUT_CPU)
        urls = {"direct": upstream.url, **{t: p.url for t, p in suts.items()}}
        for url in urls.values():  # warm-up: connections, caches, first-call paths
            wrk(url + POST_PATH, 1, 32, script, cpu)
        throughput: dict[str, list[float]] = {t: [] for t in urls}
        cpu_us: dict[str, list[float]] = {t: [] for t in urls}
        pids = {"direct": upstream.pid, **{t: p.pid for t, p in suts.items()}}
        for round_ in range(rounds):
            # Interleaved, the order reversed every other round: drift hits every target alike.
            order = list(urls) if round_ % 2 == 0 else list(reversed(urls))
            for t in order:
                before = cpu_seconds(pids[t])
                r = wrk(urls[t] + POST_PATH, seconds, 32, script, cpu)
                used = cpu_seconds(pids[t]) - before
                throughput[t].append(r.requests_per_s)
                cpu_us[t].append(used * 1e6 / max(r.requests, 1))
                print(
                    f"round {round_ + 1}: {t}: {r.requests_per_s:.0f} requests/s, "
                    f"{cpu_us[t][-1]:.0f} µs of CPU per request",
                    flush=True,
                )
        latency = {t: wrk(url + POST_PATH, seconds, 1, script, cpu) for t, url in urls.items()}
        download = {t: wrk(url + nginx.BLOB_PATH, seconds, 1, None, cpu) for t, url in urls.items()}
    for t in urls:
        print(
            f"{t}: median {statistics.median(throughput[t]):.0f} requests/s; "
            f"p50 {latency[t].p50_ms:.3f} ms p99 {latency[t].p99_ms:.3f} ms; "
            f"1 MiB: {download[t].requests_per_s:.0f}/s p50 {download[t].p50_ms:.2f} ms",
            flush=True,
        )
    return PassthroughResults(seconds, rounds, pinned, throughput, cpu_us, latency, download)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-passthrough-") as tmp:
        results = run(Path(tmp), args.seconds, args.rounds)
    print(json.dumps(asdict(results)))


if __name__ == "__main__":
    main()
