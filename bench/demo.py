"""The main job: a real dstack server on loopback, dstack-coalescer in front of it, traffic
passing through, and N one-run stops and deletes sent straight to the server and through the
proxy, side by side; first on dstack 0.18.40 (the server whose web UI sends one stop per selected
run), then on 0.22.5.

    make demo            (or: .venv/bin/python -m bench.demo [--runs 20])
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import urllib.request
from functools import partial
from pathlib import Path

import aiohttp

from harness.processes import ProxyProcess
from harness.server import DstackServer

from . import servers
from .workload import Measured, measure, stop_then_delete, table


async def _show_passthrough(server: DstackServer, proxy_url: str) -> None:
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    async with aiohttp.ClientSession() as session:
        for method, path, body in (
            ("GET", "/healthcheck", None),
            ("POST", "/api/users/get_my_user", {}),
            ("POST", "/api/projects/list", {}),
        ):
            for name, base in (("direct", server.url), ("proxy ", proxy_url)):
                async with session.request(method, base + path, json=body, headers=headers) as resp:
                    text = (await resp.text())[:70]
                print(f"  {name} {method:4} {path:24} -> {resp.status} {text}")


def show(spec: servers.ServerSpec, n: int, workdir: Path) -> None:
    """One server version: start it and a proxy, show traffic passing through, then the table."""
    print(
        f"\n=== dstack {spec.label} ===\n"
        f"Starting a real dstack {spec.label} server (about 20 s) ..."
    )
    with (
        servers.running(spec) as server,
        ProxyProcess(server.url, workdir / f"proxy-{spec.version}.log") as proxy,
    ):
        print(
            f"dstack {server.version} at {server.url}, dstack-coalescer {proxy.url} "
            f"(admin {proxy.admin_url})\n\nTraffic passing through:"
        )
        asyncio.run(_show_passthrough(server, proxy.url))
        rows: list[Measured] = []
        for way in ("direct singles", "proxy singles"):
            print(
                f"\n{way}: creating {n} runs, stopping them with {n} concurrent one-run "
                "requests, then deleting them the same way ..."
            )
            names = [f"demo-{way.split()[0]}-{i}" for i in range(n)]
            measured = partial(measure, server, proxy.url, way, project="main", names=names)
            rows += [r for r in stop_then_delete(server, "main", names, measured) if r]
        metrics = urllib.request.urlopen(f"{proxy.admin_url}/metrics").read().decode()
    rows.sort(key=lambda r: (r.op != "stop", r.way))
    print(f"\ndstack {spec.label}:\n" + table(rows))
    saved = [
        ln
        for ln in metrics.splitlines()
        if ln.startswith("dstack_coalescer_batch_calls_saved_total")
    ]
    print("\nThe proxy's own count (admin /metrics):", *saved, sep="\n  ")
    print("Upstream calls above are counted from the dstack server's own log.")


def main() -> None:
    parser = argparse.ArgumentParser(description="dstack-coalescer demo")
    parser.add_argument("--runs", type=int, default=20, help="runs per way (N callers)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="coalescer-demo-") as tmp:
        for spec in servers.specs():  # 0.18.40 first
            show(spec, args.runs, Path(tmp))


if __name__ == "__main__":
    main()
