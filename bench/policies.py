"""Flush policies side by side against a real dstack server, each in its own proxy process
(`--policy quiet|window|idle|adaptive`): a lone stop's added latency, 20 stops at once, 20 stops
over 6 connections, and 100 at once, every shape on fresh runs, policies interleaved.

    .venv/bin/python -m bench.policies [--pairs 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.api import create_project
from harness.processes import FastUpstream, ProcessStartError, ProxyProcess
from harness.runs import create_active_runs, stop_runs
from harness.server import DstackServer

from .workload import Measured, bodies_for, connect, measure, post_all, timed_one

POLICIES = ("quiet", "window", "idle", "adaptive")
CHUNK = 10  # lone pairs per batch of fresh runs: keeps the server's pipeline small
INSTANT_PAIRS = 200  # lone stop pairs per policy against the instant upstream
UNKNOWN_PAIRS = 120  # lone stops of unknown runs per target on the real server


@dataclass
class PolicyFigures:
    policy: str
    lone_ms: list[float] = field(default_factory=list)  # one lone stop through this proxy
    unknown_ms: list[float] = field(default_factory=list)  # the same, naming no run at all
    direct_instant_ms: list[float] = field(default_factory=list)  # instant upstream, direct
    lone_instant_ms: list[float] = field(default_factory=list)  # the same through this proxy
    at_once_20: list[Measured] = field(default_factory=list)
    six_connections_20: list[Measured] = field(default_factory=list)
    at_once_100: list[Measured] = field(default_factory=list)


@dataclass
class PolicyResults:
    direct_lone_ms: list[float]  # the same lone stop straight to the server, interleaved
    direct_unknown_ms: list[float]  # a lone stop naming no run, straight to the server
    policies: dict[str, PolicyFigures]
    direct_batch_100: list[Measured]  # one direct stop naming 100 runs
    fast_100_s: list[float]  # 100 one-run stops at once against a server that answers at once


def interleaved(
    targets: dict[str, str], project: str, names: dict[str, list[str]], token: str, offset: int
) -> dict[str, list[float]]:
    """One stop at a time to every target in turn (order rotated each time), on kept-alive
    connections warmed up first, so the figure is the request, not the TCP handshake."""
    samples: dict[str, list[float]] = {t: [] for t in targets}
    conns = {t: connect(url) for t, url in targets.items()}
    try:
        for conn in conns.values():
            timed_one(conn, "stop", project, "warm-up", token)  # no such run: a no-op
        for i in range(len(next(iter(names.values())))):
            order = list(targets)
            shift = (offset + i) % len(order)
            for t in order[shift:] + order[:shift]:
                samples[t].append(timed_one(conns[t], "stop", project, names[t][i], token))
    finally:
        for conn in conns.values():
            conn.close()
    return samples


def lone_stops(server: DstackServer, proxies: dict[str, str], pairs: int) -> dict[str, list[float]]:
    """A lone stop, nothing else happening, each on a fresh active run: straight to the
    server ("direct") and through every policy's proxy, interleaved."""
    targets = {"direct": server.url, **proxies}
    samples: dict[str, list[float]] = {t: [] for t in targets}
    for chunk in range(0, pairs, CHUNK):
        project = f"lone{chunk}"
        create_project(server, project)
        size = min(CHUNK, pairs - chunk)
        names = {t: [f"l{chunk + i}-{t}" for i in range(size)] for t in targets}
        every = [n for ns in names.values() for n in ns]
        create_active_runs(server, project, every)
        for t, s in interleaved(targets, project, names, server.admin_token, chunk).items():
            samples[t] += s
        # The stop race can put a stopped run back; stop again so the pipeline stays quiet.
        stop_runs(server, project, every)
    return samples


def lone_stops_unknown(
    server: DstackServer, proxies: dict[str, str], count: int
) -> dict[str, list[float]]:
    """A lone stop naming a run that does not exist, on the real server: dstack still looks it
    up and answers 200 `null`, but no run churns in the background, so its jitter is small and
    what the proxy adds shows (docs/dstack-api.md: stop skips unknown runs)."""
    create_project(server, "unknown")
    targets = {"direct": server.url, **proxies}
    names = {t: [f"u{i}-{t}" for i in range(count)] for t in targets}
    return interleaved(targets, "unknown", names, server.admin_token, 0)


def lone_stops_instant(
    fast: FastUpstream, proxies: dict[str, ProxyProcess], count: int, passes: int = 3
) -> dict[str, tuple[list[float], list[float]]]:
    """The same against an upstream that answers at once, what the proxy itself adds without
    the dstack server's jitter: per policy, (direct, proxied) pairs interleaved within that
    policy's block, blocks in turn `passes` times. Blocks, because a process idle for a window
    (20 ms) wakes up slower: interleaved with the window policy, every target would pay that."""
    urls = {"direct": fast.url, **{p: proc.url for p, proc in proxies.items()}}
    warm = {t: [f"w{i}" for i in range(50)] for t in urls}
    interleaved(urls, "main", warm, "bench", 0)  # first-request costs (lazy imports, caches)
    out: dict[str, tuple[list[float], list[float]]] = {p: ([], []) for p in proxies}
    for k in range(passes):
        for policy in proxies:
            names = {t: [f"i{k}-{i}" for i in range(count // passes)] for t in ("direct", policy)}
            pair = {t: urls[t] for t in names}
            samples = interleaved(pair, "main", names, "bench", k)
            out[policy][0].extend(samples["direct"])
            out[policy][1].extend(samples[policy])
    return out


def _fast_100(fast_url: str, token: str) -> float:
    names = [f"f{i}" for i in range(100)]
    started = time.perf_counter()
    answers = asyncio.run(
        post_all(
            fast_url,
            "/api/project/main/runs/stop",
            bodies_for("proxy singles", "stop", names),
            token,
        )
    )
    if {status for status, _ in answers} != {200}:
        raise RuntimeError("fast upstream did not answer 200 to every stop")
    return time.perf_counter() - started


def shapes(
    server: DstackServer,
    proxies: dict[str, str],
    fast_url: str,
    rounds: int,
    results: PolicyResults,
) -> None:
    """Per round, per policy (interleaved): 20 at once, 20 over 6 connections, 100 at once;
    then the two baselines of the N = 100 bound."""
    for round_ in range(rounds):
        for policy, url in proxies.items():
            project = f"r{round_}{policy}"
            create_project(server, project)
            names = [f"s{round_}{policy}-{i}" for i in range(140)]
            create_active_runs(server, project, names)
            figures = results.policies[policy]
            for bucket, chosen, connections in (
                (figures.at_once_20, names[:20], None),
                (figures.six_connections_20, names[20:40], 6),
                (figures.at_once_100, names[40:], None),
            ):
                m = measure(server, url, "proxy singles", "stop", project, chosen, connections)
                bucket.append(m)
                print(
                    f"round {round_ + 1} {policy}: {len(chosen)} "
                    f"{'at once' if connections is None else f'over {connections} connections'}"
                    f": {m.upstream_calls} calls, {m.wall_s:.3f} s, ok={m.ok}",
                    flush=True,
                )
            stop_runs(server, project, names)
        project = f"r{round_}batch"
        create_project(server, project)
        names = [f"b{round_}-{i}" for i in range(100)]
        create_active_runs(server, project, names)
        m = measure(server, "", "direct batch", "stop", project, names)
        results.direct_batch_100.append(m)
        stop_runs(server, project, names)
        results.fast_100_s.append(_fast_100(fast_url, server.admin_token))
        print(
            f"round {round_ + 1}: direct 100-name stop {m.wall_s:.3f} s; 100 at once against "
            f"an instant server {results.fast_100_s[-1]:.3f} s",
            flush=True,
        )


def _start_proxies(
    stack: contextlib.ExitStack,
    upstream: str,
    log_dir: Path,
    wanted: tuple[str, ...],
) -> dict[str, ProxyProcess]:
    """One proxy per policy in front of `upstream`. A port picked free can be taken by another
    process before the proxy binds it: that start is tried again on new ports."""
    proxies: dict[str, ProxyProcess] = {}
    for policy in wanted:
        log = log_dir / f"proxy-{policy}.log"
        for attempt in range(3):
            try:
                proxies[policy] = stack.enter_context(
                    ProxyProcess(upstream, log, "--policy", policy)
                )
                break
            except ProcessStartError as exc:
                if "address already in use" not in str(exc) or attempt == 2:
                    raise
    return proxies


def run(server: DstackServer, workdir: Path, pairs: int, rounds: int) -> PolicyResults:
    """Start one proxy per policy in front of the server, and another in front of an instant
    upstream, and measure every shape."""
    with contextlib.ExitStack() as stack:
        started = _start_proxies(stack, server.url, workdir / "dstack", POLICIES)
        proxies = {p: proc.url for p, proc in started.items()}
        fast = stack.enter_context(FastUpstream(workdir / "fast.log"))
        instant = _start_proxies(stack, fast.url, workdir / "instant", POLICIES)
        lone = lone_stops(server, proxies, pairs)
        unknown = lone_stops_unknown(server, proxies, UNKNOWN_PAIRS)
        lone_instant = lone_stops_instant(fast, instant, INSTANT_PAIRS)
        results = PolicyResults(
            direct_lone_ms=lone.pop("direct"),
            direct_unknown_ms=unknown.pop("direct"),
            policies={
                p: PolicyFigures(
                    p,
                    lone_ms=lone[p],
                    unknown_ms=unknown[p],
                    direct_instant_ms=lone_instant[p][0],
                    lone_instant_ms=lone_instant[p][1],
                )
                for p in proxies
            },
            direct_batch_100=[],
            fast_100_s=[],
        )
        shapes(server, proxies, fast.url, rounds, results)
    return results


def run_shapes(server: DstackServer, workdir: Path, rounds: int) -> PolicyResults:
    """The policies side by side on a server whose calls take long (dstack 0.18.40: a stop
    takes about 0.23 s): the shapes, and a lone stop naming a run that does not exist. No lone
    stops of fresh runs (that server's jitter is several milliseconds, so they would need many
    pairs of its slow runs to say anything) and no instant upstream (the proxy's own cost does
    not depend on the server behind it)."""
    with contextlib.ExitStack() as stack:
        started = _start_proxies(stack, server.url, workdir / "dstack", POLICIES)
        proxies = {p: proc.url for p, proc in started.items()}
        fast = stack.enter_context(FastUpstream(workdir / "fast.log"))
        unknown = lone_stops_unknown(server, proxies, UNKNOWN_PAIRS)
        results = PolicyResults(
            direct_lone_ms=[],
            direct_unknown_ms=unknown.pop("direct"),
            policies={p: PolicyFigures(p, unknown_ms=unknown[p]) for p in proxies},
            direct_batch_100=[],
            fast_100_s=[],
        )
        shapes(server, proxies, fast.url, rounds, results)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-policies-") as tmp, DstackServer() as server:
        results = run(server, Path(tmp), args.pairs, args.rounds)
    print(json.dumps(asdict(results)))


if __name__ == "__main__":
    main()
