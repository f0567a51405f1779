"""docs/measurements.md, sections 3-5: pass-through, memory, where the pass-through time goes."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .memory import HOLD_FLAGS
from .report_text import para
from .results import Run

PASSTHROUGH_PLOT = "bench-passthrough.png"


@dataclass(frozen=True)
class PassthroughFigures:
    """One pass-through's figures, from its rounds."""

    rps: float  # median requests/s
    p50: float  # ms, one request at a time
    p99: float
    added_p50: float  # over wrk straight to the upstream
    added_p99: float
    mib_s: float  # 1 MiB downloads/s
    dl_p50: float  # ms
    vs_bare: float  # median of the per-round ratios of requests/s to bare aiohttp's
    cpu_us: float  # median CPU time per request
    cpu_vs_bare: float  # requests per CPU-second, relative to bare aiohttp's


def passthrough_figures(run: Run) -> dict[str, PassthroughFigures]:
    pt = run.passthrough
    direct = pt.latency["direct"]
    bare = pt.throughput["bare aiohttp"]
    bare_cpu = statistics.median(pt.cpu_us["bare aiohttp"])
    out = {}
    for name, rps in pt.throughput.items():
        lat, dl = pt.latency[name], pt.download[name]
        cpu_us = statistics.median(pt.cpu_us[name])
        out[name] = PassthroughFigures(
            rps=statistics.median(rps),
            p50=lat.p50_ms,
            p99=lat.p99_ms,
            added_p50=lat.p50_ms - direct.p50_ms,
            added_p99=lat.p99_ms - direct.p99_ms,
            mib_s=dl.requests_per_s,  # 1 MiB per request
            dl_p50=dl.p50_ms,
            # Rounds are adjacent in time, so the ratio within a round cancels the machine's drift.
            vs_bare=statistics.median(a / b for a, b in zip(rps, bare, strict=True)),
            cpu_us=cpu_us,
            cpu_vs_bare=bare_cpu / cpu_us,
        )
    return out


def passthrough_section(run: Run) -> str:
    pt = run.passthrough
    fig = passthrough_figures(run)
    lines = [
        "| path | requests/s | vs bare aiohttp | CPU µs per request | vs bare, per CPU-second "
        "| p50 / p99 ms | added p50 / p99 ms | 1 MiB downloads/s | 1 MiB p50 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in fig.items():
        label = "direct to the upstream" if name == "direct" else name
        added = "" if name == "direct" else f"{f.added_p50:+.3f} / {f.added_p99:+.3f}"
        share = "" if name == "direct" else f"{f.vs_bare:.0%}"
        cpu_share = "" if name == "direct" else f"{f.cpu_vs_bare:.0%}"
        lines.append(
            f"| {label} | {f.rps:.0f} | {share} | {f.cpu_us:.0f} | {cpu_share} "
            f"| {f.p50:.3f} / {f.p99:.3f} "
            f"| {added} | {f.mib_s:.0f} | {f.dl_p50:.2f} |"
        )
    pinning = (
        "Each system under test ran alone on core 1; wrk (`taskset`) and the upstream on core 0."
        if pt.pinned
        else "One core: nothing pinned."
    )
    return "\n".join(
        [
            para(
                "The same fast upstream (nginx answering `null` from memory, and 1 MiB at /blob) "
                "behind single-process pass-throughs: the proxy with its default "
                "configuration (JSON logging at info, metrics, header policy, uvloop), the same "
                "on asyncio's own event loop (`--event-loop asyncio`), the same with "
                "`--mode off` (no batchable-route matching), a bare aiohttp "
                "pass-through (`bench/bare_passthrough.py`: one shared ClientSession, body read "
                "whole, no logging or metrics; on asyncio's loop, as aiohttp runs by default: "
                "the reference of the target; and on uvloop) and nginx (one process, kept-alive "
                "upstream "
                "connections, 64 KiB buffers). The upstream is nginx because an aiohttp upstream "
                "tops out near the pass-throughs' own rate and would hide their differences. "
                + pinning,
            ),
            "",
            para(
                f"requests/s: `wrk -t1 -c32 -d{pt.seconds}s` with a small JSON POST "
                f"(`{run.settings.post_path}`), median of {pt.rounds} interleaved "
                'rounds (order reversed every other round); "vs bare" is the median of the '
                "per-round ratios. CPU per request is the process's own user + system time "
                "(/proc/<pid>/stat) over the requests wrk counted: unlike requests/s, it hardly "
                "depends on what else the shared machine runs. "
                f"Latency: `wrk -t1 -c1 -d{pt.seconds}s --latency`, one request at a "
                "time; added = minus the direct figure. 1 MiB: GET of /blob on one connection.",
            ),
            "",
            *lines,
            "",
            para(
                "Against the bare pass-through on uvloop too, the proxy (on uvloop) makes "
                f"{fig['proxy'].rps / fig['bare aiohttp on uvloop'].rps:.0%} of its "
                "requests/s and "
                f"{fig['bare aiohttp on uvloop'].cpu_us / fig['proxy'].cpu_us:.0%} of its "
                "requests per CPU-second: what the proxy's own work (header policy, logging, "
                "metrics, drain bookkeeping, batchable-route matching) costs on the same loop.",
            )
            if "bare aiohttp on uvloop" in fig
            else "",
            "",
            f"![pass-through requests per second]({PASSTHROUGH_PLOT})",
        ]
    )


def memory_section(run: Run) -> str:
    mem = run.memory_by_target()
    m = mem["proxy"]
    lines = [
        "| process | held | upstream calls held | idle RSS MB | RSS holding MB | peak RSS MB "
        "| answered 200 `null` | seconds to hold all |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in mem.items():
        lines.append(
            f"| {name} | {r.held} | {r.upstream_calls} | {r.idle_rss_mb:.1f} "
            f"| {r.held_rss_mb:.1f} | {r.peak_rss_mb:.1f} | {r.answered_ok} "
            f"| {r.seconds_to_hold:.1f} |"
        )
    per = {n: (r.peak_rss_mb - r.idle_rss_mb) * 1e3 / r.requests for n, r in mem.items()}
    return "\n".join(
        [
            para(
                f"{m.requests} one-run stops across {m.projects} projects, one connection "
                "each, held by an upstream that answers only when told to "
                "(`slow_upstream.py`, holding its calls), then all answered. The proxy runs "
                f"its default configuration with `{' '.join(HOLD_FLAGS)}`; held is its "
                "in-flight gauge. The bare aiohttp pass-through, holding the same requests, is "
                "the floor of the stack (held: its open sockets, upstream ones included). Peak "
                "RSS is VmHWM from "
                "/proc/<pid>/status after every request was answered (MB = 10^6 bytes).",
            ),
            "",
            *lines,
            "",
            para(
                "Per held request above idle: "
                + "; ".join(f"{n} {kb:.1f} kB" for n, kb in per.items())
                + ".",
            ),
        ]
    )


def profile_section(run: Run) -> str:
    prof = run.profile
    if not prof:
        return "Not profiled in this run (py-spy missing or not permitted)."
    proxy, bare = prof.proxy, prof.bare
    us = {  # µs of CPU per request spent with each package's frame innermost
        name: {label: share * process.cpu_us for label, share in process.self}
        for name, process in (("proxy", proxy), ("bare", bare))
    }
    labels = list(dict.fromkeys([*us["proxy"], *us["bare"]]))
    labels.sort(key=lambda k: -(us["proxy"].get(k, 0) - us["bare"].get(k, 0)))
    own = [
        "| where (innermost frame) | proxy µs/request | bare aiohttp µs/request | difference |",
        "|---|---|---|---|",
    ]
    for k in labels:
        a, b = us["proxy"].get(k, 0.0), us["bare"].get(k, 0.0)
        own.append(f"| {k} | {a:.0f} | {b:.0f} | {round(a - b):+d} |")
    own.append(
        f"| **total (CPU per request)** | **{proxy.cpu_us:.0f}** | **{bare.cpu_us:.0f}** "
        f"| **{proxy.cpu_us - bare.cpu_us:+.0f}** |"
    )
    inclusive = [
        "| the proxy: concern anywhere on the stack | share | µs/request |",
        "|---|---|---|",
    ]
    inclusive += [
        f"| {name} | {share:.1%} | {share * proxy.cpu_us:.0f} |" for name, share in proxy.inclusive
    ]
    functions = ["| the proxy's own function, inclusive | share | µs/request |", "|---|---|---|"]
    functions += [
        f"| `{name}` | {share:.1%} | {share * proxy.cpu_us:.0f} |"
        for name, share in proxy.proxy_functions
    ]
    return "\n".join(
        [
            para(
                f"py-spy sampled each process at {prof.rate} Hz during {prof.seconds} s of "
                f"the same wrk POST load, pinned as above, both on asyncio's event loop (py-spy "
                "cannot follow coroutines resumed from uvloop's C code, and the proxy's own "
                f"functions cost the same on either loop): the proxy ({proxy.samples} samples, "
                f"{proxy.requests_per_s:.0f} requests/s under the profiler) and the bare "
                f"aiohttp pass-through ({bare.samples} samples, {bare.requests_per_s:.0f} "
                "requests/s). Each share of samples is turned into microseconds with the "
                "process's CPU time per request in that same run. Self time by package of the "
                "innermost frame (socket system calls count for the frame that made them, mostly "
                "asyncio's), largest difference first:",
            ),
            "",
            *own,
            "",
            para(
                f"Reading: the proxy spends {proxy.cpu_us - bare.cpu_us:+.0f} µs of CPU per "
                "request more than the bare pass-through; the largest differences are "
                + ", ".join(
                    f"{k} ({us['proxy'].get(k, 0) - us['bare'].get(k, 0):+.0f} µs)"
                    for k in labels[:3]
                )
                + ". Logging, metrics and the header policy together take "
                # The first three concerns (hotspots.CONCERNS): logging, metrics, header policy.
                f"{sum(share for _, share in proxy.inclusive[:3]) * proxy.cpu_us:.0f} µs "
                "(inclusive, below).",
            ),
            "",
            *inclusive,
            "",
            *functions,
        ]
    )
