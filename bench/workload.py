"""The workload the demo and the benchmarks share: N runs on a real dstack server,
stopped (then deleted) one of three ways, with upstream calls read from the server's own log."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson

from harness.bursts import Answer, burst
from harness.runs import create_active_runs, run_states, stop_runs_until_finished
from harness.server import DstackServer

Way = Literal[
    "direct singles", "proxy singles", "direct batch", "direct leader + rest", "direct rounds"
]
WAYS: tuple[Way, ...] = ("direct singles", "proxy singles", "direct batch")
# The floors, sent straight to the server: what no proxy of their kind can beat. A proxy that
# sends a lone request at once (issue 9's 1 ms) sends a burst's first request alone, and the
# rest beside it at best: `LEADER_FLOOR`, the first name in a call of its own and the others in
# one call, at once. A proxy answers a browser's next request no sooner than one upstream call
# after its previous answer: `ROUNDS_FLOOR`, the names in calls of one round each (as many as
# the browser has connections), one after another (docs/design.md, What no proxy can beat).
LEADER_FLOOR: Way = "direct leader + rest"
ROUNDS_FLOOR: Way = "direct rounds"


@dataclass(frozen=True)
class Measured:
    way: Way
    op: str
    callers: int
    upstream_calls: int
    wall_s: float
    ok: bool  # every caller got 200 and every run changed as asked


async def post_all(
    base: str,
    path: str,
    bodies: list[dict[str, object]],
    token: str,
    connections: int | None = None,
) -> list[Answer]:
    """Send every body; all at once on a connection each (`connections=None`, what an HTTP/2
    front delivers), or over at most `connections` kept-alive connections, each waiting for its
    answer before sending the next (what an HTTP/1.1 browser does)."""
    if connections is None:
        return await burst(base, path, bodies, token)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:

        async def one(body: dict[str, object]) -> Answer:
            async with session.post(base + path, data=orjson.dumps(body), headers=headers) as r:
                return r.status, await r.read()

        return list(await asyncio.gather(*(one(b) for b in bodies)))


def post_one(base: str, path: str, body: dict[str, object], token: str) -> int:
    """One POST, its status; the answer is read whole."""
    return asyncio.run(post_all(base, path, [body], token))[0][0]


def bodies_for(
    way: Way, op: str, names: list[str], per_call: int | None = None
) -> list[dict[str, object]]:
    """The request bodies of `way`: one per name, one naming all, the first name alone and
    one naming the rest, or (`ROUNDS_FLOOR`) one per `per_call` names."""
    if way == "direct batch":
        groups = [names]
    elif way == LEADER_FLOOR:
        groups = [names[:1], names[1:]] if len(names) > 1 else [names]
    elif way == ROUNDS_FLOOR:
        step = per_call or len(names)
        groups = [names[i : i + step] for i in range(0, len(names), step)]
    else:
        groups = [[n] for n in names]
    extra = {"abort": False} if op == "stop" else {}
    return [{"runs_names": g, **extra} for g in groups]


@dataclass(frozen=True)
class Fired:
    """What `fire` saw: the answers, the wall time until the last, s, and when the callers
    started on the wall clock, which the server's log shares on this machine (its calls are
    placed against it: `bulk.Phase.first_call_ms`)."""

    answers: list[Answer]
    wall_s: float
    started_at: float


def fire(
    base: str,
    token: str,
    way: Way,
    op: str,
    project: str,
    names: list[str],
    connections: int | None = None,
) -> Fired:
    """Send the stops or deletes for `names` to `base` the given way (all at once, or over at
    most `connections` connections; `ROUNDS_FLOOR`: a call per `connections` names, one after
    another)."""
    bodies = bodies_for(way, op, names, connections)
    if way == ROUNDS_FLOOR:
        connections = 1
    started_at, started = time.time(), time.perf_counter()
    answers = asyncio.run(
        post_all(base, f"/api/project/{project}/runs/{op}", bodies, token, connections)
    )
    return Fired(answers, time.perf_counter() - started, started_at)


def settled(
    server: DstackServer, mark: int, op: str, project: str, names: list[str], answers: list[Answer]
) -> tuple[int, int, bool]:
    """After `fire`: the server's calls since `mark`, the answers other than 200, and whether
    every caller got 200 and every run changed as asked."""
    calls = server.count_requests(f"/runs/{op}", since=mark)
    states = run_states(server, project, include_deleted=True, created=names)
    wanted = {"deleted"} if op == "delete" else {"terminating", "terminated"}
    non_200 = sum(1 for status, _ in answers if status != 200)
    return calls, non_200, non_200 == 0 and all(states.get(n) in wanted for n in names)


def measure(
    server: DstackServer,
    proxy_url: str,
    way: Way,
    op: str,
    project: str,
    names: list[str],
    connections: int | None = None,
) -> Measured:
    """Send the stops or deletes for `names` the given way; count the server's calls."""
    base = proxy_url if way == "proxy singles" else server.url
    mark = server.log_mark()
    fired = fire(base, server.admin_token, way, op, project, names, connections)
    calls, _, ok = settled(server, mark, op, project, names, fired.answers)
    return Measured(way, op, len(names), calls, fired.wall_s, ok)


def connect(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)


def timed_one(
    conn: http.client.HTTPConnection, op: str, project: str, name: str, token: str
) -> float:
    """One stop or delete of `name` on the kept-alive `conn`: its time, ms; anything but a 200
    is an error."""
    body: dict[str, object] = {"runs_names": [name]}
    if op == "stop":
        body["abort"] = False
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    started = time.perf_counter()
    conn.request("POST", f"/api/project/{project}/runs/{op}", json.dumps(body), headers)
    resp = conn.getresponse()
    resp.read()
    elapsed = (time.perf_counter() - started) * 1000
    if resp.status != 200:
        raise RuntimeError(f"lone {op} via {conn.host}:{conn.port} -> {resp.status}")
    return elapsed


M = TypeVar("M")


def finished_for_delete(server: DstackServer, project: str, names: list[str]) -> bool:
    """Set-up for a delete, not measured: stop `names` until every one is finished, and whether
    they are. With a hundred runs pending, the server's pipeline can take minutes to finish a
    stopped "submitted" run; a run that a lost stop (its pipeline can overwrite one,
    docs/dstack-api.md) left active that long is aborted. A delete naming a run still active
    would be refused whole, so its time would not be a delete's: the caller skips it."""
    try:
        stop_runs_until_finished(server, project, names, timeout=300)
    except TimeoutError as stuck:
        print(f"set-up for the delete: {stuck}; aborting them", flush=True)
        try:
            stop_runs_until_finished(server, project, names, abort=True, timeout=120)
        except TimeoutError as still:
            print(f"delete not measured: {still}", flush=True)
            return False
    return True


def stop_then_delete(
    server: DstackServer, project: str, names: list[str], measured: Callable[[str], M]
) -> tuple[M, M | None]:
    """Create `names`, stop them (`measured("stop")`), let them finish, delete them
    (`measured("delete")`): the demo's rows, or the bench's phases with the server's usage.
    The delete is `None`, not measured, where dstack left a run active (`finished_for_delete`);
    the stop's own figures are kept (its `ok` is false then)."""
    create_active_runs(server, project, names)
    stopped = measured("stop")
    if not finished_for_delete(server, project, names):
        return stopped, None
    return stopped, measured("delete")


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
