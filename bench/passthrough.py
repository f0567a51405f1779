"""What pass-through costs: added latency of a small POST through the proxy against a real dstack
server, and requests per second against a fast upstream, direct and proxied, side by side in
one run. Prints a table; figures, not assertions.

    .venv/bin/python -m bench.passthrough [--requests 400] [--seconds 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from tests.support.processes import FastUpstream, ProxyProcess
from tests.support.server import DstackServer

SMALL_POST = "/api/users/get_my_user"


def _timed_posts(url: str, token: str, count: int) -> list[float]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        conn.request("POST", SMALL_POST, body=b"{}", headers=headers)
        resp = conn.getresponse()
        resp.read()
        samples.append((time.perf_counter() - started) * 1000)
        assert resp.status == 200, resp.status
    conn.close()
    return samples


def _pct(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]


def latency(requests: int, workdir: Path) -> dict[str, dict[str, float]]:
    """p50/p99 of a small POST, direct and via the proxy, interleaved in rounds of 50."""
    with (
        DstackServer() as server,
        ProxyProcess(server.url, workdir / "proxy-latency.log", "--log-level", "warning") as proxy,
    ):
        direct: list[float] = []
        proxied: list[float] = []
        _timed_posts(server.url, server.admin_token, 20)  # warm-up
        _timed_posts(proxy.url, server.admin_token, 20)
        for _ in range(max(requests // 50, 1)):
            direct += _timed_posts(server.url, server.admin_token, 50)
            proxied += _timed_posts(proxy.url, server.admin_token, 50)
    return {
        name: {"p50": _pct(s, 50), "p99": _pct(s, 99)}
        for name, s in (("direct", direct), ("proxy", proxied))
    }


_WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{"project_name": "main"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench"
"""


def throughput(seconds: int, workdir: Path) -> dict[str, float]:
    """Requests per second against a fast upstream, direct and via the proxy (wrk, 32 conns)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    script = workdir / "post.lua"
    script.write_text(_WRK_SCRIPT)
    out = {}
    with (
        FastUpstream(workdir / "fast.log") as fast,
        ProxyProcess(fast.url, workdir / "proxy-rps.log", "--log-level", "warning") as proxy,
    ):
        for name, base in (("direct", fast.url), ("proxy", proxy.url)):
            result = subprocess.run(
                [wrk, "-t1", "-c32", f"-d{seconds}s", "-s", str(script), base + "/api/runs/list"],
                capture_output=True,
                text=True,
                check=True,
            )
            out[name] = float(re.search(r"Requests/sec:\s+([\d.]+)", result.stdout).group(1))
            if "Non-2xx" in result.stdout or "Socket errors" in result.stdout:
                raise SystemExit(f"errors under load:\n{result.stdout}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-passthrough-") as tmp:
        lat = latency(args.requests, Path(tmp))
        rps = throughput(args.seconds, Path(tmp))
    print(f"\nSmall POST {SMALL_POST} to a real dstack server, {args.requests} sequential each way")
    print("| path | p50 ms | p99 ms |\n|---|---|---|")
    for name in ("direct", "proxy"):
        print(f"| {name} | {lat[name]['p50']:.2f} | {lat[name]['p99']:.2f} |")
    print(
        f"| added by the proxy | {lat['proxy']['p50'] - lat['direct']['p50']:+.2f} "
        f"| {lat['proxy']['p99'] - lat['direct']['p99']:+.2f} |"
    )
    print(f"\nPass-through throughput against a fast upstream (wrk -c32, {args.seconds} s)")
    print("| path | requests/s |\n|---|---|")
    for name in ("direct", "proxy"):
        print(f"| {name} | {rps[name]:.0f} |")
    print(f"| proxy / direct | {rps['proxy'] / rps['direct']:.2f} |")
    print(json.dumps({"latency_ms": lat, "requests_per_second": rps}))


if __name__ == "__main__":
    main()
