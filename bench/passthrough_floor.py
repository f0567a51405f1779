"""Pass-through at the floor of its stack: requests/s and latency of a small JSON POST (wrk -t1
-c32) through the proxy, a bare aiohttp pass-through (bench/bare_passthrough.py) and nginx,
one process each, against the same fast upstream (nginx answering `null`), interleaved in
rounds in one run. The proxy runs as shipped (JSON logs at info, metrics, header policy), and
once more with batching off (no batchable-route matching). Prints a Markdown table; figures,
not assertions.

    .venv/bin/python -m bench.passthrough_floor [--seconds 10] [--rounds 3]

Needs `wrk` and `nginx` (Debian: apt-get install wrk nginx).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.processes import Process, ProxyProcess, find_free_port

WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{"project_name": "main", "limit": 10}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench"
"""
NGINX = """worker_processes 1;
daemon off;
pid {dir}/nginx-{port}.pid;
error_log {dir}/nginx-{port}.err warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body-{port};
    proxy_temp_path {dir}/proxy-{port};
    {upstream}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 100000;
        location / {{ {location} }}
        location /download/ {{ {download} }}
    }}
}}
"""
ANSWER = 'default_type application/json; return 200 "null";'
ONE_MB = "/download/1mb"
PROXY_PASS = 'proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";'


def nginx(workdir: Path, port: int, location: str, upstream: int = 0) -> Process:
    conf = workdir / f"nginx-{port}.conf"
    pool = f"upstream up {{ server 127.0.0.1:{upstream}; keepalive 64; }}" if upstream else ""
    download = f"alias {workdir}/files/;" if not upstream else location
    conf.write_text(
        NGINX.format(dir=workdir, port=port, upstream=pool, location=location, download=download)
    )
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    return Process(
        [binary, "-e", str(workdir / f"nginx-{port}.err"), "-c", str(conf), "-p", str(workdir)],
        f"http://127.0.0.1:{port}/healthcheck",
        workdir / f"nginx-{port}.log",
    )


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by `pid` and its children that are still running
    (nginx's worker): on a shared machine, requests per CPU-second is the fair comparison."""
    pids = [pid, *(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    ticks = 0
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def wrk(url: str, seconds: int, script: Path | None, pid: int) -> dict[str, float]:
    """One wrk run: requests/s, requests per CPU-second of `pid`, p50 and p99 in ms."""
    cpu = cpu_seconds(pid)
    post = ["-s", str(script)] if script else []
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", *post, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"errors under load at {url}:\n{out}")
    cpu = cpu_seconds(pid) - cpu
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    assert rps is not None and total is not None, out
    result = {"rps": float(rps.group(1)), "per_cpu_s": int(total.group(1)) / max(cpu, 0.01)}
    for pct in ("50", "99"):
        found = re.search(rf"\s{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\b", out)
        assert found is not None, out
        value, unit = float(found.group(1)), found.group(2)
        result[f"p{pct}"] = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--proxy-arg", action="append", default=[], help="extra proxy flag")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        work = Path(tmp)
        script = work / "post.lua"
        script.write_text(WRK_SCRIPT)
        (work / "files").mkdir()
        (work / "files" / "1mb").write_bytes(os.urandom(1 << 20))
        for readable in (work, work / "files", work / "files" / "1mb"):  # by nginx's workers
            readable.chmod(0o755)
        up_port, bare_port, nginx_port = find_free_port(), find_free_port(), find_free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        with (
            nginx(work, up_port, ANSWER) as up,
            ProxyProcess(upstream, work / "proxy.log", *args.proxy_arg) as proxy,
            ProxyProcess(upstream, work / "proxy-off.log", "--mode", "off") as proxy_off,
            Process(
                [sys.executable, "-m", "bench.bare_passthrough", upstream, str(bare_port)],
                f"http://127.0.0.1:{bare_port}/healthcheck",
                work / "bare.log",
            ) as bare,
            nginx(work, nginx_port, PROXY_PASS, upstream=up_port) as front,
        ):
            targets = {
                "direct (upstream)": (upstream, up.pid),
                "proxy": (proxy.url, proxy.pid),
                "proxy, batching off": (proxy_off.url, proxy_off.pid),
                "bare aiohttp": (f"http://127.0.0.1:{bare_port}", bare.pid),
                "nginx": (f"http://127.0.0.1:{nginx_port}", front.pid),
            }
            path = "/api/project/main/runs/list"  # passes through: not a batchable endpoint
            for url, pid in targets.values():
                wrk(url + path, 2, script, pid)  # warm-up
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
            downloads: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name, (url, pid) in targets.items():
                    runs[name].append(wrk(url + path, args.seconds, script, pid))
                    downloads[name].append(wrk(url + ONE_MB, args.seconds, None, pid))
    print(f"\nwrk -t1 -c32 -d{args.seconds}s, medians of {args.rounds} rounds, one process each")
    med = _table("small JSON POST (passes through)", runs)
    _table("GET of a 1 MiB file", downloads)
    bare = med["bare aiohttp"]
    for name in ("proxy", "proxy, batching off"):
        print(
            f"{name} / bare aiohttp (small POST): {med[name]['rps'] / bare['rps']:.1%} of "
            f"requests/s, {med[name]['per_cpu_s'] / bare['per_cpu_s']:.1%} of requests per "
            "CPU-second"
        )


def _table(title: str, runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    med = {
        name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()
    }
    direct = med["direct (upstream)"]
    print(f"\n{title}")
    print("| path | requests/s | requests per CPU-second | p50 ms | p99 ms | added p50 / p99 ms |")
    print("|---|---|---|---|---|---|")
    for name, m in med.items():
        added = (
            ""
            if m is direct
            else f"{m['p50'] - direct['p50']:+.2f} / {m['p99'] - direct['p99']:+.2f}"
        )
        print(
            f"| {name} | {m['rps']:.0f} | {m['per_cpu_s']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} "
            f"| {added} |"
        )
    return med


if __name__ == "__main__":
    main()
