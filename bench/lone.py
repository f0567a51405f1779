"""A lone stop, and a lone delete, with nothing else happening: straight to the server and
through the proxy at its default configuration, one at a time in alternating order on kept-alive
connections, each naming a fresh run (active for the stop, finished for the delete).

And what any hop costs (`hops`): a lone stop naming a run that does not exist, straight to the
server, through the proxy, through a bare aiohttp pass-through on uvloop (the floor of an
aiohttp hop: `bare_passthrough.py`), through that server with a raw upstream client and
through uvloop and httptools alone (the floor of a Python hop: `raw_hops.py`), and through
nginx, in rotating order."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from harness import nginx
from harness.api import create_project
from harness.runs import create_active_runs
from harness.server import DstackServer

from .passthrough import BarePassthrough
from .policies import interleaved
from .raw_hops import RawHop
from .workload import connect, finished_for_delete, timed_one

CHUNK = 10  # pairs per batch of fresh runs: keeps the server's pipeline small


@dataclass
class LonePairs:
    op: str
    direct_ms: list[float] = field(default_factory=list)
    proxy_ms: list[float] = field(default_factory=list)  # adjacent in time to direct_ms[i]


def _pairs(
    server: DstackServer,
    urls: dict[str, str],
    op: str,
    project: str,
    names: dict[str, list[str]],
    kept: LonePairs,
    offset: int,
) -> None:
    """One op at a time to both targets in alternating order, on connections opened and warmed
    up (a no-op stop naming no run) just before: a connection idle while runs are created
    would be closed by the server's keep-alive timeout."""
    conns = {t: connect(url) for t, url in urls.items()}
    try:
        for conn in conns.values():
            timed_one(conn, "stop", project, "warm-up", server.admin_token)
        for i in range(len(names["direct"])):
            order = ("direct", "proxy") if (offset + i) % 2 == 0 else ("proxy", "direct")
            for t in order:
                ms = timed_one(conns[t], op, project, names[t][i], server.admin_token)
                (kept.direct_ms if t == "direct" else kept.proxy_ms).append(ms)
    finally:
        for conn in conns.values():
            conn.close()


def run(server: DstackServer, proxy_url: str, pairs: int) -> list[LonePairs]:
    """`pairs` lone stops and then `pairs` lone deletes per target, CHUNK fresh runs per
    target at a time; the order of the two targets alternates."""
    stops, deletes = LonePairs("stop"), LonePairs("delete")
    urls = {"direct": server.url, "proxy": proxy_url}
    for chunk in range(0, pairs, CHUNK):
        project = f"single{chunk}"
        create_project(server, project)
        size = min(CHUNK, pairs - chunk)
        names = {t: [f"l{chunk + i}-{t}" for i in range(size)] for t in urls}
        every = names["direct"] + names["proxy"]
        create_active_runs(server, project, every)
        _pairs(server, urls, "stop", project, names, stops, chunk)
        # The stop race can put a run back: finish them all before the deletes.
        if finished_for_delete(server, project, every):
            _pairs(server, urls, "delete", project, names, deletes, chunk)
    return [stops, deletes]


HOPS = (
    "direct",
    "proxy",
    "bare aiohttp",
    "aiohttp server, raw client",
    "uvloop + httptools",
    "nginx",
)


@dataclass
class LoneHops:
    """Lone stops naming runs that do not exist, per target in HOPS: `ms[t][i]` for every
    target `t` was sent in the same round `i`, one after another. dstack looks such a run up and
    answers 200 `null` with no run churning behind it, so its own jitter is small and what each
    hop adds shows."""

    ms: dict[str, list[float]] = field(default_factory=dict)


def hops(server: DstackServer, proxy_url: str, workdir: Path, rounds: int) -> LoneHops:
    """`rounds` rounds of one lone stop per target, the order rotating from round to round."""
    project = "hops"
    create_project(server, project)
    with contextlib.ExitStack() as stack:
        workdir.mkdir(parents=True, exist_ok=True)
        bare = stack.enter_context(BarePassthrough(server.url, workdir / "bare.log", "uvloop"))
        client = stack.enter_context(RawHop("client", server.url, workdir / "client.log"))
        raw = stack.enter_context(RawHop("raw", server.url, workdir / "raw.log"))
        front = stack.enter_context(
            nginx.passthrough(workdir / "nginx", server.url, ready_path="/healthcheck")
        )
        hops = (server.url, proxy_url, bare.url, client.url, raw.url, front.url)
        urls = dict(zip(HOPS, hops, strict=True))
        names = {t: [f"absent-{i}-{t}" for i in range(rounds)] for t in HOPS}
        return LoneHops(interleaved(urls, project, names, server.admin_token, 0))
