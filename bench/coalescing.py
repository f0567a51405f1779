"""Batching against N: for N one-run stops (then deletes) on a real dstack server, upstream
calls and wall time sent straight to the server, through the proxy, and as one direct batch,
side by side in one run. Medians over rounds; each way gets fresh runs every round.

    .venv/bin/python -m bench.coalescing [--sizes 10 40 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from tests.support.processes import ProxyProcess
from tests.support.server import DstackServer

from .workload import WAYS, Measured, stop_then_delete, table


def _median(rows: list[Measured]) -> Measured:
    first = rows[0]
    return Measured(
        first.way,
        first.op,
        first.callers,
        int(statistics.median(r.upstream_calls for r in rows)),
        statistics.median(r.wall_s for r in rows),
        all(r.ok for r in rows),
    )


def sweep(server: DstackServer, proxy_url: str, sizes: list[int], rounds: int) -> list[Measured]:
    """Every size, every way, `rounds` times (ways interleaved); the medians, stops first."""
    samples: dict[tuple[str, int, str], list[Measured]] = {}
    serial = 0
    for n in sizes:
        for round_ in range(rounds):
            for way in WAYS:  # interleaved, so drift in the machine hits every way
                serial += 1
                names = [f"b{serial}-{i}" for i in range(n)]
                for m in stop_then_delete(server, proxy_url, way, "main", names):
                    samples.setdefault((m.op, n, way), []).append(m)
                    print(
                        f"round {round_ + 1}: {m.op} N={n} {way}: "
                        f"{m.upstream_calls} calls, {m.wall_s:.3f} s, ok={m.ok}",
                        flush=True,
                    )
    order = sorted(samples, key=lambda k: (k[0] != "stop", k[1], WAYS.index(k[2])))  # type: ignore[arg-type]
    return [_median(samples[k]) for k in order]


def ratios(rows: list[Measured]) -> str:
    """Wall-time ratios per N: direct singles over proxy, proxy over one direct batch."""
    lines = [
        "| op | N | direct singles / proxy (wall) | proxy / direct batch (wall) |",
        "|---|---|---|---|",
    ]
    by = {(r.op, r.callers, r.way): r for r in rows}
    for op, n in dict.fromkeys((r.op, r.callers) for r in rows):
        d, p, b = (by[(op, n, w)] for w in WAYS)
        lines.append(f"| {op} | {n} | {d.wall_s / p.wall_s:.1f}x | {p.wall_s / b.wall_s:.1f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 40, 100])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-coalescing-") as tmp,
        DstackServer() as server,
        ProxyProcess(server.url, Path(tmp) / "proxy.log", "--log-level", "warning") as proxy,
    ):
        rows = sweep(server, proxy.url, args.sizes, args.rounds)
    print(f"\nMedians of {args.rounds} rounds\n" + table(rows) + "\n\n" + ratios(rows))
    print(json.dumps([r.__dict__ for r in rows]))


if __name__ == "__main__":
    main()
