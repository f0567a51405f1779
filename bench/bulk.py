"""N one-run stops and then deletes at once on a real dstack server, side by side: straight to
the server (direct singles), through the proxy at its default configuration (proxy singles), one
request naming all N (direct batch), and the floor of any proxy that sends a lone request at
once (the first name alone beside one request naming the rest, `LEADER_FLOOR`). Per phase: time
until the last caller has its answer, upstream calls and errors from the server's own log,
non-200 answers, and the server's CPU seconds and peak RSS (`usage.py`). Also the browser shape
(20 over 6 kept-alive connections, beside one call a round, `ROUNDS_FLOOR`) and the client's own
cost (the same N requests through a proxy in front of an upstream that answers at once).

    .venv/bin/python -m bench.bulk [--sizes 10 50] [--rounds 1] [--version 0.18.40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from harness.processes import FastUpstream, ProxyProcess
from harness.runs import create_active_runs
from harness.server import (
    DstackServer,
    ProcessedRequest,
    parse_background_stamps,
    parse_processed_requests,
)
from harness.versions import CURRENT_VERSION

from . import servers
from .usage import Sampler
from .workload import (
    LEADER_FLOOR,
    ROUNDS_FLOOR,
    WAYS,
    Way,
    bodies_for,
    fire,
    post_all,
    settled,
    stop_then_delete,
)

OPS = ("stop", "delete")
BROWSER_N, BROWSER_CONNECTIONS = 20, 6


@dataclass(frozen=True)
class Phase:
    """One op sent one way: N callers' requests, until the last has its answer."""

    way: Way
    op: str
    n: int
    connections: int | None  # None: all at once, a connection each
    wall_s: float
    calls: int  # upstream calls, from the server's DEBUG log
    non_200: int  # answers other than 200
    ok: bool  # every answer 200 and every run as asked (terminating/terminated, or deleted)
    locked: int  # "database is locked" lines in the server's log during the phase
    errors: int  # other error lines (ERROR records, tracebacks, 5xx answers)
    cpu_s: float  # the server's CPU seconds during the phase
    peak_rss_mb: float  # the server's peak RSS during the phase
    start_rss_mb: float  # its RSS when the phase began
    # Each upstream call's own time on the server, ms, as its log says ("Processed request ...
    # in X s"), in the order they finished: where a proxied phase's time went.
    call_ms: list[float] = field(default_factory=list)
    # The same calls as spans on the server's clock, ms from the first one's start (its log's
    # timestamps; empty where a run did not record them): which calls were in the air together.
    call_spans_ms: list[tuple[float, float]] = field(default_factory=list)
    # Records dstack's background pipeline wrote while the calls were in the air (its passes
    # over runs and jobs, which share the server with them; `pipeline_lines`). None: the run did
    # not record it.
    pipeline_lines: int | None = None
    # From the callers' start (the client's wall clock, the server's log's on this machine) to
    # the first call's start in the server, ms: the time the N requests took to reach it, which
    # a burst through the proxy spends before its leader can leave. None: not recorded.
    first_call_ms: float | None = None


def phase(
    server: DstackServer,
    proxy_url: str,
    way: Way,
    op: str,
    project: str,
    names: list[str],
    connections: int | None = None,
) -> Phase:
    base = proxy_url if way == "proxy singles" else server.url
    mark = server.log_mark()
    with Sampler(server) as sampler:
        fired = fire(base, server.admin_token, way, op, project, names, connections)
    usage = sampler.usage
    assert usage is not None
    calls, non_200, ok = settled(server, mark, op, project, names, fired.answers)
    log = server.read_log(mark)  # once, for the calls and the pipeline's records beside them
    calls_made = [
        r
        for r in parse_processed_requests(log)
        if r.method == "POST" and r.path.endswith(f"/runs/{op}")
    ]
    return Phase(
        way,
        op,
        len(names),
        connections,
        fired.wall_s,
        calls,
        non_200,
        ok,
        usage.locked,
        usage.errors,
        usage.cpu_s,
        usage.peak_rss_mb,
        usage.start_rss_mb,
        [r.seconds * 1000 for r in calls_made],
        spans_ms(calls_made),
        pipeline_lines(calls_made, parse_background_stamps(log)),
        first_call_ms(calls_made, fired.started_at),
    )


def _placed(calls: list[ProcessedRequest]) -> list[tuple[float, float]] | None:
    """Each call's (start, end) on the server's clock, in the order given; None if there are no
    calls or a call's log line had no timestamp."""
    spans = [
        (r.started_at, r.finished_at)
        for r in calls
        if r.started_at is not None and r.finished_at is not None
    ]
    return spans if spans and len(spans) == len(calls) else None


def spans_ms(calls: list[ProcessedRequest]) -> list[tuple[float, float]]:
    """Each call's (start, end) on the server, ms from the earliest start, in the order given;
    empty if a call's log line had no timestamp."""
    if (spans := _placed(calls)) is None:
        return []
    first = min(start for start, _ in spans)
    return [((start - first) * 1000, (end - first) * 1000) for start, end in spans]


def first_call_ms(calls: list[ProcessedRequest], callers_started_at: float) -> float | None:
    """From the callers' start to the first call's start on the server, ms; None if there are
    no calls or a call's line had no timestamp."""
    if (spans := _placed(calls)) is None:
        return None
    return (min(start for start, _ in spans) - callers_started_at) * 1000


def pipeline_lines(calls: list[ProcessedRequest], stamps: list[float]) -> int | None:
    """How many of the pipeline's records (`stamps`, on the server's clock) were written from
    the first call's start to the last call's end; None if there were no calls or a call's
    line had no timestamp."""
    if (spans := _placed(calls)) is None:
        return None
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    return sum(1 for t in stamps if first <= t <= last)


def _say(label: str, p: Phase) -> None:
    print(
        f"{label} {p.op} N={p.n} {p.way}{'' if p.connections is None else ' /6'}: "
        f"{p.calls} calls, {p.wall_s:.3f} s, non-200 {p.non_200}, locked {p.locked}, "
        f"errors {p.errors}, cpu {p.cpu_s:.2f} s, rss {p.peak_rss_mb:.0f} MB, ok={p.ok}, "
        f"pipeline lines {p.pipeline_lines}",
        flush=True,
    )


def ways_at_once(floor: bool) -> tuple[Way, ...]:
    """The ways N at once are sent: `WAYS`, and the leader's floor if asked for."""
    return (*WAYS, LEADER_FLOOR) if floor else WAYS


def rotated(ways: tuple[Way, ...], r: int) -> tuple[Way, ...]:
    """`ways` in the order of round `r`, balanced for what a way leaves behind: over
    `len(ways)` rounds (twice that for an odd count) each way takes every place equally often
    and follows every other way equally often (a Williams design). A plain rotation put the
    proxy right after direct singles in two rounds of three, so whatever a way leaves on the
    server (runs its pipeline still works on) would weigh on one way more than on the others."""
    n = len(ways)
    first, low, high = [0], 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    order = [(i + r) % n for i in first]
    if n % 2 and (r // n) % 2:
        order.reverse()
    return tuple(ways[i] for i in order)


def at_once(
    server: DstackServer,
    proxy_url: str,
    rounds: dict[int, int],
    label: str = "",
    floor: bool = True,
) -> list[Phase]:
    """Every N, `rounds[N]` times, the ways interleaved in a balanced order (`rotated`)."""
    out: list[Phase] = []
    serial = 0
    for n, count in rounds.items():
        for r in range(count):
            for way in rotated(ways_at_once(floor), r):
                serial += 1
                names = [f"n{serial}-{i}" for i in range(n)]
                measured = partial(phase, server, proxy_url, way, project="main", names=names)
                for p in stop_then_delete(server, "main", names, measured):
                    if p is not None:
                        out.append(p)
                        _say(f"{label} round {r + 1}", p)
    return out


def _warm(server: DstackServer, proxy_url: str) -> None:
    """20 no-op stops at once (naming no run), straight and through the proxy: a fresh process
    pays its lazy imports and first connections (and the server its database pool) here, not
    in the measured phase."""
    for base in (server.url, proxy_url):
        bodies = bodies_for("proxy singles", "stop", [f"warm-up-{i}" for i in range(20)])
        asyncio.run(post_all(base, "/api/project/main/runs/stop", bodies, server.admin_token))


def stops_alone(
    fresh: Callable[[], AbstractContextManager[tuple[DstackServer, str]]],
    n: int,
    rounds: int,
    label: str = "",
    floor: bool = True,
) -> list[Phase]:
    """N stops at once, each way on a server of its own (`fresh()` starts one and a proxy in
    front of it): no deletes, so the stopped runs are never waited for, and no backlog of them
    loads the server while the next way is measured. For N where waiting for the server's
    pipeline to finish every stopped run would not fit the budget (0.18.40 finishes about one
    stopped run a second)."""
    out: list[Phase] = []
    for r in range(rounds):
        for way in rotated(ways_at_once(floor), r):
            with fresh() as (server, proxy_url):
                _warm(server, proxy_url)
                names = [f"f{r}-{i}" for i in range(n)]
                create_active_runs(server, "main", names)
                p = phase(server, proxy_url, way, "stop", "main", names)
                out.append(p)
                _say(f"{label} fresh server, round {r + 1}", p)
    return out


def browser(server: DstackServer, proxy_url: str, rounds: int, label: str = "") -> list[Phase]:
    """20 one-run stops then deletes over at most 6 kept-alive connections, each waiting for
    its answer before it sends the next, as an HTTP/1.1 browser does: direct, through the
    proxy, and one call a round (the floor of any proxy), interleaved."""
    out: list[Phase] = []
    ways: tuple[Way, ...] = ("direct singles", "proxy singles", ROUNDS_FLOOR)
    for r in range(rounds):
        for way in rotated(ways, r):
            names = [f"h{r}-{ways.index(way)}-{i}" for i in range(BROWSER_N)]
            measured = partial(
                phase,
                server,
                proxy_url,
                way,
                project="main",
                names=names,
                connections=BROWSER_CONNECTIONS,
            )
            for p in stop_then_delete(server, "main", names, measured):
                if p is not None:
                    out.append(p)
                    _say(f"{label} browser round {r + 1}", p)
    return out


@dataclass(frozen=True)
class ClientCost:
    """N one-run requests at once against an upstream that answers at once (`null`), through a
    proxy at its default configuration and straight to it: what the client and the proxy cost
    by themselves, the allowance of the N-at-once bound."""

    op: str
    n: int
    proxy_s: list[float]
    direct_s: list[float]


def client_cost(workdir: Path, sizes: list[int], rounds: int) -> list[ClientCost]:
    out = []
    workdir.mkdir(parents=True, exist_ok=True)
    with (
        FastUpstream(workdir / "instant.log") as fast,
        ProxyProcess(fast.url, workdir / "instant-proxy.log") as proxy,
    ):
        for op in OPS:
            for n in sizes:
                cost = ClientCost(op, n, [], [])
                for r in range(rounds + 1):  # the first round warms both up, not kept
                    for base, kept in ((proxy.url, cost.proxy_s), (fast.url, cost.direct_s)):
                        bodies = bodies_for("proxy singles", op, [f"c{r}-{i}" for i in range(n)])
                        started = time.perf_counter()
                        answers = asyncio.run(
                            post_all(base, f"/api/project/main/runs/{op}", bodies, "bench")
                        )
                        if r and {s for s, _ in answers} == {200}:
                            kept.append(time.perf_counter() - started)
                out.append(cost)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--version", default=CURRENT_VERSION, help="dstack server version")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-bulk-") as tmp,
        servers.running(servers.ServerSpec(args.version)) as server,
        ProxyProcess(server.url, Path(tmp) / "proxy.log") as proxy,
    ):
        rows = at_once(server, proxy.url, dict.fromkeys(args.sizes, args.rounds), args.version)
        rows += browser(server, proxy.url, args.rounds, args.version)
    print(json.dumps([asdict(r) for r in rows]))


if __name__ == "__main__":
    main()
