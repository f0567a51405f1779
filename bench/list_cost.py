"""How the time of one runs/stop and runs/delete call grows with the length of its list, against
a real dstack server: the measurement behind the `max_names` default.

For each N, N fresh active runs are created and stopped in one call (timed), and, once they have
finished, deleted in one call (timed). Stops naming N unknown runs show the cost of the list
alone. Results go to stdout as a Markdown table and one JSON line.

    .venv/bin/python -m bench.list_cost [--sizes 1 10 50 100 200] [--unknown 10 100 1000 5000]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from harness.runs import create_active_runs, stop_runs_until_finished
from harness.server import DstackServer

from .workload import post_one

PROJECT = "main"


def _timed(send: Callable[[], int]) -> tuple[float, int]:
    started = time.perf_counter()
    status = send()
    return time.perf_counter() - started, status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 50, 100, 200])
    parser.add_argument("--unknown", type=int, nargs="+", default=[10, 100, 1000, 5000])
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    with DstackServer() as server:

        def call(op: str, names: list[str]) -> int:
            body: dict[str, object] = {"runs_names": names}
            if op == "stop":
                body["abort"] = False
            return post_one(
                server.url, f"/api/project/{PROJECT}/runs/{op}", body, server.admin_token
            )

        call("stop", ["warm-up"])  # first-request costs (imports, caches) are not the list's
        for n in args.unknown:
            took, status = _timed(lambda n=n: call("stop", [f"unknown-{i}" for i in range(n)]))
            rows.append({"op": "stop, unknown names", "n": n, "s": took, "status": status})
            print(rows[-1], flush=True)
        for n in args.sizes:
            names = [f"lc{n}-{i}" for i in range(n)]
            create_active_runs(server, PROJECT, names)
            took, status = _timed(lambda names=names: call("stop", names))
            rows.append({"op": "stop, active runs", "n": n, "s": took, "status": status})
            print(rows[-1], flush=True)
            stop_runs_until_finished(server, PROJECT, names, timeout=600)
            took, status = _timed(lambda names=names: call("delete", names))
            rows.append({"op": "delete, finished runs", "n": n, "s": took, "status": status})
            print(rows[-1], flush=True)
    print("\n| op | N names | one call, ms | ms per name | status |\n|---|---|---|---|---|")
    for r in rows:
        s, n = float(r["s"]), int(r["n"])  # type: ignore[arg-type]
        print(f"| {r['op']} | {n} | {s * 1000:.1f} | {s * 1000 / n:.2f} | {r['status']} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
