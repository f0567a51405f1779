"""The workload the demo and the coalescing benchmark share: N runs on a real dstack server,
stopped (then deleted) one of three ways, with upstream calls read from the server's own log."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal

import aiohttp
import orjson

from tests.support.runs import create_active_runs, run_states, stop_runs_until_finished
from tests.support.server import DstackServer

Way = Literal["direct singles", "proxy singles", "direct batch"]
WAYS: tuple[Way, ...] = ("direct singles", "proxy singles", "direct batch")


@dataclass(frozen=True)
class Measured:
    way: Way
    op: str
    callers: int
    upstream_calls: int
    wall_s: float
    ok: bool  # every caller got 200 and every run changed as asked


async def _post_all(base: str, path: str, bodies: list[dict[str, object]], token: str) -> list[int]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True)
    ) as session:

        async def one(body: dict[str, object]) -> int:
            async with session.post(base + path, data=orjson.dumps(body), headers=headers) as r:
                await r.read()
                return r.status

        return list(await asyncio.gather(*(one(b) for b in bodies)))


def post_one(base: str, path: str, body: dict[str, object], token: str) -> int:
    """One POST, its status; the answer is read whole."""
    return asyncio.run(_post_all(base, path, [body], token))[0]


def _bodies(way: Way, op: str, names: list[str]) -> list[dict[str, object]]:
    groups = [names] if way == "direct batch" else [[n] for n in names]
    extra = {"abort": False} if op == "stop" else {}
    return [{"runs_names": g, **extra} for g in groups]


def measure(
    server: DstackServer, proxy_url: str, way: Way, op: str, project: str, names: list[str]
) -> Measured:
    """Send the stops or deletes for `names` the given way; count the server's calls."""
    base = proxy_url if way == "proxy singles" else server.url
    mark = server.log_mark()
    started = time.perf_counter()
    statuses = asyncio.run(
        _post_all(
            base, f"/api/project/{project}/runs/{op}", _bodies(way, op, names), server.admin_token
        )
    )
    wall = time.perf_counter() - started
    calls = server.count_requests(f"/runs/{op}", since=mark)
    states = run_states(server, project, include_deleted=True)
    wanted = {"deleted"} if op == "delete" else {"terminating", "terminated"}
    ok = set(statuses) == {200} and all(states.get(n) in wanted for n in names)
    return Measured(way, op, len(names), calls, wall, ok)


def stop_then_delete(
    server: DstackServer, proxy_url: str, way: Way, project: str, names: list[str]
) -> tuple[Measured, Measured]:
    """Create `names`, stop them the given way, let them finish, delete them the same way."""
    create_active_runs(server, project, names)
    stopped = measure(server, proxy_url, way, "stop", project, names)
    # Setup for the delete, not measured. With a hundred runs pending, the server's pipeline
    # can take minutes to finish a stopped "submitted" run.
    stop_runs_until_finished(server, project, names, timeout=300)
    deleted = measure(server, proxy_url, way, "delete", project, names)
    return stopped, deleted


def table(rows: list[Measured]) -> str:
    lines = [
        "| op | N callers | way | upstream calls | wall s | all ok |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.op} | {r.callers} | {r.way} | {r.upstream_calls} | {r.wall_s:.3f} "
            f"| {'yes' if r.ok else 'NO'} |"
        )
    return "\n".join(lines)
