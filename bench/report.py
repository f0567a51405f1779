"""docs/measurements.md and the README's "Measured" section, written from one run's results
(the plain data `python -m bench` saves in docs/measurements.json)."""

from __future__ import annotations

import statistics
import textwrap
from typing import Any

from . import compare_claims, compare_report
from .compare import Comparison
from .compare_cells import VERSIONS_PLOT
from .memory import HOLD_FLAGS
from .stats import median_interval
from .tools import pct

Data = dict[str, Any]
POLICY_PLOT = "bench-policies.png"
PASSTHROUGH_PLOT = "bench-passthrough.png"


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def lone_figures(data: Data, upstream: str = "dstack") -> dict[str, dict[str, float]]:
    """p50/p99 of the lone stop per target, what each policy adds over direct (difference of
    the percentiles), and the median of the paired differences (adjacent in time) with its 95%
    bootstrap interval.

    `upstream`: "dstack" (the real server, fresh active runs; one direct series interleaved
    with every policy), "unknown" (the real server, runs that do not exist) or "instant" (an
    upstream that answers at once; a direct series per policy, from its block).
    """
    pol = data["policies"]
    figures = pol["policies"]
    if upstream in ("dstack", "unknown"):
        series = "direct_lone_ms" if upstream == "dstack" else "direct_unknown_ms"
        key = "lone_ms" if upstream == "dstack" else "unknown_ms"
        direct_of = {name: pol[series] for name in figures}
        pooled = pol[series]
    else:
        key, direct_of = "lone_instant_ms", {n: f["direct_instant_ms"] for n, f in figures.items()}
        pooled = [x for name in figures for x in direct_of[name]]
    out = {"direct": {"p50": pct(pooled, 50), "p99": pct(pooled, 99), "n": len(pooled)}}
    for name, fig in figures.items():
        s, direct = fig[key], direct_of[name]
        out[name] = {
            "p50": pct(s, 50),
            "p99": pct(s, 99),
            "n": len(s),
            "added_p50": pct(s, 50) - pct(direct, 50),
            "added_p99": pct(s, 99) - pct(direct, 99),
            "paired": statistics.median(a - b for a, b in zip(s, direct, strict=True)),
        }
        out[name]["paired_low"], out[name]["paired_high"] = median_interval(
            [a - b for a, b in zip(s, direct, strict=True)]
        )
    return out


def _interval(fig: dict[str, float], digits: int = 1) -> str:
    """`+1.7 [-0.5, +3.9]`: the paired median and its 95% interval."""
    return (
        f"{fig['paired']:+.{digits}f} [{fig['paired_low']:+.{digits}f}, "
        f"{fig['paired_high']:+.{digits}f}]"
    )


def _worst_calls(rows: list[Data]) -> int:
    return max(r["upstream_calls"] for r in rows)


def _median_wall(rows: list[Data]) -> float:
    return statistics.median(r["wall_s"] for r in rows)


def bound_100(data: Data) -> float:
    """One direct 100-name stop plus 100 requests against a server that answers at once."""
    pol = data["policies"]
    return _median_wall(pol["direct_batch_100"]) + statistics.median(pol["fast_100_s"])


def passthrough_figures(data: Data) -> dict[str, dict[str, float]]:
    pt = data["passthrough"]
    direct = pt["latency"]["direct"]
    out = {}
    for name, rps in pt["throughput"].items():
        lat, dl = pt["latency"][name], pt["download"][name]
        out[name] = {
            "rps": statistics.median(rps),
            "p50": lat["p50_ms"],
            "p99": lat["p99_ms"],
            "added_p50": lat["p50_ms"] - direct["p50_ms"],
            "added_p99": lat["p99_ms"] - direct["p99_ms"],
            "mib_s": dl["requests_per_s"],  # 1 MiB per request
            "dl_p50": dl["p50_ms"],
        }
    bare = pt["throughput"]["bare aiohttp"]
    bare_cpu = statistics.median(pt["cpu_us"]["bare aiohttp"])
    for name, f in out.items():
        # Rounds are adjacent in time, so the ratio within a round cancels the machine's drift.
        f["vs_bare"] = statistics.median(
            a / b for a, b in zip(pt["throughput"][name], bare, strict=True)
        )
        f["cpu_us"] = statistics.median(pt["cpu_us"][name])
        f["cpu_vs_bare"] = bare_cpu / f["cpu_us"]  # requests per CPU-second, relative
    return out


def targets(data: Data) -> list[tuple[str, str, str, bool]]:
    """(target, where, measured, met) for every target of the issue, one row per policy."""
    rows = []
    lone, instant = lone_figures(data), lone_figures(data, "instant")
    unknown = lone_figures(data, "unknown")
    bound = bound_100(data)
    for name, fig in data["policies"]["policies"].items():
        rows += [
            (
                "a lone stop adds ≤ 1 ms at p50 (real server, fresh active runs)",
                name,
                f"{lone[name]['added_p50']:+.1f} ms; paired {_interval(lone[name])}",
                lone[name]["added_p50"] <= 1.0,
            ),
            (
                "a lone stop adds ≤ 1 ms at p50 (real server, unknown runs)",
                name,
                f"{unknown[name]['added_p50']:+.2f} ms; paired {_interval(unknown[name], 2)}",
                unknown[name]["added_p50"] <= 1.0,
            ),
            (
                "a lone stop adds ≤ 1 ms at p50 (instant upstream)",
                name,
                f"{instant[name]['added_p50']:+.2f} ms",
                instant[name]["added_p50"] <= 1.0,
            ),
            (
                "20 at once: ≤ 2 calls (worst round)",
                name,
                f"{_worst_calls(fig['at_once_20'])}",
                _worst_calls(fig["at_once_20"]) <= 2,
            ),
            (
                "20 over 6 connections: ≤ 5 calls (worst round)",
                name,
                f"{_worst_calls(fig['six_connections_20'])}",
                _worst_calls(fig["six_connections_20"]) <= 5,
            ),
            (
                f"N = 100 at once within {bound:.3f} s (median round; worst)",
                name,
                f"{_median_wall(fig['at_once_100']):.3f} s; "
                f"{max(r['wall_s'] for r in fig['at_once_100']):.3f} s",
                _median_wall(fig["at_once_100"]) <= bound,
            ),
        ]
    pt = passthrough_figures(data)["proxy"]
    rows.append(
        (
            "pass-through ≥ 95% of bare aiohttp req/s",
            "default config",
            f"{pt['vs_bare']:.0%} (median of per-round ratios)",
            pt["vs_bare"] >= 0.95,
        )
    )
    rows.append(
        (
            "pass-through ≥ 95% of bare aiohttp, per CPU-second",
            "default config",
            f"{pt['cpu_vs_bare']:.0%} ({pt['cpu_us']:.0f} µs of CPU per request)",
            pt["cpu_vs_bare"] >= 0.95,
        )
    )
    mem = _memory(data)["proxy"]
    rows.append(
        (
            "peak RSS holding 10 000 requests ≤ 150 MB",
            "default config",
            f"{mem['peak_rss_mb']:.0f} MB",
            mem["peak_rss_mb"] <= 150 and mem["answered_ok"] == mem["requests"],
        )
    )
    return rows


def _memory(data: Data) -> dict[str, Data]:
    return {m["target"]: m for m in data["memory"]}


def _para(*parts: str, indent: str = "") -> str:
    """One Markdown paragraph (or list item, with `indent`), wrapped at 100 columns."""
    return textwrap.fill(
        "".join(parts),
        100,
        subsequent_indent=indent,
        break_on_hyphens=False,
        break_long_words=False,
    )


def _calls(n: int) -> str:
    return f"{n} call" if n == 1 else f"{n} calls"


def _targets_table(data: Data) -> str:
    """The policy targets with one column per policy, then the others, each with its verdict."""
    rows = targets(data)
    policies = list(data["policies"]["policies"])
    default = data["settings"].get("default_policy")
    by_target: dict[str, dict[str, str]] = {}
    others = []
    for target, where, measured, ok in rows:
        cell = f"{measured} ({_yes(ok)})"
        if where in policies:
            by_target.setdefault(target, {})[where] = cell
        else:
            others.append(f"| {target} | {where} | {measured} | {_yes(ok)} |")
    lines = [
        "| target | "
        + " | ".join(f"policy `{p}`" + (" (default)" if p == default else "") for p in policies)
        + " |",
        "|---" * (len(policies) + 1) + "|",
    ]
    lines += [
        f"| {t} | " + " | ".join(cells.get(p, "") for p in policies) + " |"
        for t, cells in by_target.items()
    ]
    lines += ["", "| target | setup | measured | met |", "|---|---|---|---|", *others]
    return "\n".join(lines)


def _policy_section(data: Data) -> str:
    pol = data["policies"]
    lone, instant = lone_figures(data), lone_figures(data, "instant")
    unknown = lone_figures(data, "unknown")
    bound = bound_100(data)
    rounds = len(pol["direct_batch_100"])
    lines = [
        "| policy | lone stop p50 / p99 ms | added p50 / p99 ms | added, paired median [95%] ms "
        "| unknown run: p50 ms; added p50, paired [95%] ms "
        "| instant upstream: added p50 / p99 ms | 20 at once: calls; wall s "
        "| 20 over 6 conns: calls; wall s | 100 at once: calls; wall s |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| direct (no proxy) | {lone['direct']['p50']:.1f} / {lone['direct']['p99']:.1f} "
        f"| | | {unknown['direct']['p50']:.2f} "
        f"| ({instant['direct']['p50']:.2f} / {instant['direct']['p99']:.2f}) "
        "| 20 (one call per request) | 20 | 100 |",
    ]
    for name, fig in pol["policies"].items():
        cells = []
        for shape in ("at_once_20", "six_connections_20", "at_once_100"):
            calls = "/".join(str(r["upstream_calls"]) for r in fig[shape])
            walls = "/".join(f"{r['wall_s']:.3f}" for r in fig[shape])
            cells.append(f"{calls}; {walls}")
        lines.append(
            f"| {name} | {lone[name]['p50']:.1f} / {lone[name]['p99']:.1f} "
            f"| {lone[name]['added_p50']:+.1f} / {lone[name]['added_p99']:+.1f} "
            f"| {_interval(lone[name])} "
            f"| {unknown[name]['p50']:.2f}; {unknown[name]['added_p50']:+.2f}, "
            f"{_interval(unknown[name], 2)} "
            f"| {instant[name]['added_p50']:+.2f} / {instant[name]['added_p99']:+.2f} | "
            + " | ".join(cells)
            + " |"
        )
    missing = ", ".join(pol["unavailable"]) or "none"
    return "\n".join(
        [
            _para(
                f"A lone stop: {lone['direct']['n']} per target, one at a time, each naming a "
                "fresh active run, straight to the server and through every policy's proxy in "
                "rotating order, on kept-alive connections. Added = the proxy's percentile minus "
                "the direct one; the paired median is the median of (proxied - direct) over "
                "requests adjacent in time, with its 95% bootstrap interval: the server's own "
                "jitter (runs retrying in the background) is several milliseconds, so only the "
                f"interval says what the proxy adds. Then {unknown['direct']['n']} lone stops "
                "per target naming runs that do not exist, interleaved the same way: dstack "
                "looks them up and answers 200 `null`, with no run churning behind them, so its "
                "jitter is small. The same lone stop against an upstream that answers "
                f"at once ({instant[next(iter(pol['policies']))]['n']} pairs per policy, direct "
                "figures in brackets) shows what the proxy itself adds, without the dstack "
                "server's jitter: pairs of one policy at a time, since a process idle for a "
                "window wakes up slower and would slow every target interleaved with it.",
            ),
            "",
            _para(
                f"The shapes ran {rounds} round(s), policies interleaved, each on fresh runs: "
                "20 one-run stops at once (one connection each, what an HTTP/2 front delivers); "
                "20 over at most 6 kept-alive connections, each waiting for its answer before "
                "sending the next (an HTTP/1.1 browser); 100 at once. Calls (from the dstack log) "
                "and wall times are listed per round; the targets take the worst round's calls "
                "and the median wall time.",
            ),
            "",
            *lines,
            "",
            _para(
                "N = 100 bound: one direct 100-name stop "
                f"({_median_wall(pol['direct_batch_100']):.3f} s) plus 100 one-run stops at once "
                f"against a server that answers at once ({statistics.median(pol['fast_100_s']):.3f}"
                f" s) = **{bound:.3f} s**.",
            ),
            "",
            _para(
                f"Policies not measurable in this checkout: {missing}",
                "" if pol["policy_flag"] else " (the proxy has no `--policy` option yet)",
                ".",
            ),
            "",
            f"![added latency per policy]({POLICY_PLOT})",
        ]
    )


def _passthrough_section(data: Data) -> str:
    pt = data["passthrough"]
    fig = passthrough_figures(data)
    lines = [
        "| path | requests/s | vs bare aiohttp | CPU µs per request | vs bare, per CPU-second "
        "| p50 / p99 ms | added p50 / p99 ms | 1 MiB downloads/s | 1 MiB p50 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in fig.items():
        label = "direct to the upstream" if name == "direct" else name
        added = "" if name == "direct" else f"{f['added_p50']:+.3f} / {f['added_p99']:+.3f}"
        share = "" if name == "direct" else f"{f['vs_bare']:.0%}"
        cpu_share = "" if name == "direct" else f"{f['cpu_vs_bare']:.0%}"
        lines.append(
            f"| {label} | {f['rps']:.0f} | {share} | {f['cpu_us']:.0f} | {cpu_share} "
            f"| {f['p50']:.3f} / {f['p99']:.3f} "
            f"| {added} | {f['mib_s']:.0f} | {f['dl_p50']:.2f} |"
        )
    pinning = (
        "Each system under test ran alone on core 1; wrk (`taskset`) and the upstream on core 0."
        if pt["pinned"]
        else "One core: nothing pinned."
    )
    return "\n".join(
        [
            _para(
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
            _para(
                f"requests/s: `wrk -t1 -c32 -d{pt['seconds']}s` with a small JSON POST "
                f"(`{data['settings']['post_path']}`), median of {pt['rounds']} interleaved "
                'rounds (order reversed every other round); "vs bare" is the median of the '
                "per-round ratios. CPU per request is the process's own user + system time "
                "(/proc/<pid>/stat) over the requests wrk counted: unlike requests/s, it hardly "
                "depends on what else the shared machine runs. "
                f"Latency: `wrk -t1 -c1 -d{pt['seconds']}s --latency`, one request at a "
                "time; added = minus the direct figure. 1 MiB: GET of /blob on one connection.",
            ),
            "",
            *lines,
            "",
            _para(
                "Against the bare pass-through on uvloop too, the proxy (on uvloop) makes "
                f"{fig['proxy']['rps'] / fig['bare aiohttp on uvloop']['rps']:.0%} of its "
                "requests/s and "
                f"{fig['bare aiohttp on uvloop']['cpu_us'] / fig['proxy']['cpu_us']:.0%} of its "
                "requests per CPU-second: what the proxy's own work (header policy, logging, "
                "metrics, drain bookkeeping, batchable-route matching) costs on the same loop.",
            )
            if "bare aiohttp on uvloop" in fig
            else "",
            "",
            f"![pass-through requests per second]({PASSTHROUGH_PLOT})",
        ]
    )


def _memory_section(data: Data) -> str:
    mem = _memory(data)
    m = mem["proxy"]
    lines = [
        "| process | held | upstream calls held | idle RSS MB | RSS holding MB | peak RSS MB "
        "| answered 200 `null` | seconds to hold all |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in mem.items():
        lines.append(
            f"| {name} | {r['held']} | {r['upstream_calls']} | {r['idle_rss_mb']:.1f} "
            f"| {r['held_rss_mb']:.1f} | {r['peak_rss_mb']:.1f} | {r['answered_ok']} "
            f"| {r['seconds_to_hold']:.1f} |"
        )
    per = {n: (r["peak_rss_mb"] - r["idle_rss_mb"]) * 1e3 / r["requests"] for n, r in mem.items()}
    return "\n".join(
        [
            _para(
                f"{m['requests']} one-run stops across {m['projects']} projects, one connection "
                "each, held by an upstream that answers only when told to "
                "(`bench/slow_upstream.py`), then all answered. The proxy runs its default "
                f"configuration with `{' '.join(HOLD_FLAGS)}`; held is its in-flight gauge. The "
                "bare aiohttp pass-through, holding the same requests, is the floor of the stack "
                "(held: its open sockets, upstream ones included). Peak RSS is VmHWM from "
                "/proc/<pid>/status after every request was answered (MB = 10^6 bytes).",
            ),
            "",
            *lines,
            "",
            _para(
                "Per held request above idle: "
                + "; ".join(f"{n} {kb:.1f} kB" for n, kb in per.items())
                + ".",
            ),
        ]
    )


def _profile_section(data: Data) -> str:
    prof = data.get("profile")
    if not prof:
        return "Not profiled in this run (py-spy missing or not permitted)."
    proxy, bare = prof["proxy"], prof["bare aiohttp"]
    us = {  # µs of CPU per request spent with each package's frame innermost
        name: {label: share * run["cpu_us"] for label, share in run["self"]}
        for name, run in (("proxy", proxy), ("bare", bare))
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
        f"| **total (CPU per request)** | **{proxy['cpu_us']:.0f}** | **{bare['cpu_us']:.0f}** "
        f"| **{proxy['cpu_us'] - bare['cpu_us']:+.0f}** |"
    )
    inclusive = [
        "| the proxy: concern anywhere on the stack | share | µs/request |",
        "|---|---|---|",
    ]
    inclusive += [
        f"| {name} | {share:.1%} | {share * proxy['cpu_us']:.0f} |"
        for name, share in proxy["inclusive"]
    ]
    functions = ["| the proxy's own function, inclusive | share | µs/request |", "|---|---|---|"]
    functions += [
        f"| `{name}` | {share:.1%} | {share * proxy['cpu_us']:.0f} |"
        for name, share in proxy["proxy_functions"]
    ]
    return "\n".join(
        [
            _para(
                f"py-spy sampled each process at {prof['rate']} Hz during {prof['seconds']} s of "
                f"the same wrk POST load, pinned as above, both on asyncio's event loop (py-spy "
                "cannot follow coroutines resumed from uvloop's C code, and the proxy's own "
                f"functions cost the same on either loop): the proxy ({proxy['samples']} samples, "
                f"{proxy['requests_per_s']:.0f} requests/s under the profiler) and the bare "
                f"aiohttp pass-through ({bare['samples']} samples, {bare['requests_per_s']:.0f} "
                "requests/s). Each share of samples is turned into microseconds with the "
                "process's CPU time per request in that same run. Self time by package of the "
                "innermost frame (socket system calls count for the frame that made them, mostly "
                "asyncio's), largest difference first:",
            ),
            "",
            *own,
            "",
            _para(
                f"Reading: the proxy spends {proxy['cpu_us'] - bare['cpu_us']:+.0f} µs of CPU per "
                "request more than the bare pass-through; the largest differences are "
                + ", ".join(
                    f"{k} ({us['proxy'].get(k, 0) - us['bare'].get(k, 0):+.0f} µs)"
                    for k in labels[:3]
                )
                + ". Logging, metrics and the header policy together take "
                # The first three concerns (hotspots.CONCERNS): logging, metrics, header policy.
                f"{sum(share for _, share in proxy['inclusive'][:3]) * proxy['cpu_us']:.0f} µs "
                "(inclusive, below).",
            ),
            "",
            *inclusive,
            "",
            *functions,
        ]
    )


def _servers(data: Data) -> str:
    c = comparison(data)
    labels = [v.label for v in c.versions] if c else [data["machine"]["dstack"]]
    return " and ".join(labels)


def _header(data: Data) -> str:
    m = data["machine"]
    return _para(
        "Written by `make bench` (`python -m bench`) from one run, down to the marker at the "
        "end; hand-written notes go below it. "
        f"Run of {m['date']} on {m['cores']} cores ({m['cpu']}), Linux {m['kernel']}, "
        f"Python {m['python']}, aiohttp {m['aiohttp']}, real dstack {_servers(data)} "
        f"servers with SQLite on loopback, commit `{m['commit']}`; the whole run took "
        f"{data['elapsed_s'] / 60:.1f} min. Upstream calls are counted from the dstack "
        "server's own DEBUG log, never from the proxy's metrics. The machine is shared "
        f"with other work (load average {m['load']} at the start, {m['load_at_end']} at the "
        "end), so absolute times are noisy; every comparison is interleaved within the run. "
        "Raw data: [measurements.json](measurements.json).",
    )


def comparison(data: Data) -> Comparison | None:
    """The per-version measurements of the run (issue 14), if it has them."""
    return Comparison.from_json(data["compare"]) if "compare" in data else None


def _all_targets(data: Data) -> str:
    c = comparison(data)
    both = (
        "On each server version, the proxy at its shipped default (details in section 2):\n\n"
        + compare_report.targets_summary(c)
        + "\n\nThe flush policies side by side, on dstack 0.22.5:\n\n"
        if c
        else ""
    )
    return both + _targets_table(data)


def _versions_section(data: Data) -> str:
    c = comparison(data)
    return compare_report.section(c) if c else "Not measured in this run."


def measurements_md(data: Data) -> str:
    sections = [
        ("# Measurements", _header),
        ("## Targets", _all_targets),
        ("## 1. Flush policies", _policy_section),
        (
            "## 2. dstack 0.18.40 and 0.22.5 side by side: N at once, the browser, one request",
            _versions_section,
        ),
        ("## 3. Pass-through", _passthrough_section),
        ("## 4. Memory", _memory_section),
        ("## 5. Where the pass-through time goes", _profile_section),
    ]
    return "\n\n".join(f"{title}\n\n{body(data)}" for title, body in sections) + "\n"


def readme_measured(data: Data) -> str:
    """The body of the README's "Measured" section: the headline figures and one plot."""
    c = comparison(data)
    headline = compare_claims.headline(c) if c else []
    pt = passthrough_figures(data)
    mem = _memory(data)
    m = data["machine"]
    return "\n".join(
        [
            _para(
                f"From one `make bench` run ({m['date']}, {m['cores']} cores, real dstack "
                f"{_servers(data)} servers; upstream calls counted from their own logs). Details, "
                "policies and method: [docs/measurements.md](docs/measurements.md).",
            ),
            "",
            *(_para(line, indent="  ") for line in headline),
            _para(
                f"- Pass-through: {pt['proxy']['rps']:.0f} requests/s, "
                f"{pt['proxy']['vs_bare']:.0%} of a bare aiohttp pass-through "
                f"({pt['bare aiohttp']['rps']:.0f}/s) on the same core; nginx "
                f"{pt['nginx']['rps']:.0f}/s.",
                indent="  ",
            ),
            _para(
                f"- Peak RSS holding {mem['proxy']['requests']} requests: "
                f"{mem['proxy']['peak_rss_mb']:.0f} MB (bare aiohttp: "
                f"{mem['bare aiohttp']['peak_rss_mb']:.0f} MB).",
                indent="  ",
            ),
            "",
            _all_targets(data),
            "",
            f"![N at once on dstack 0.18.40 and 0.22.5](docs/{VERSIONS_PLOT})",
            "",
            _para(
                "Every caller still gets its own answer: when a batched call fails (say, a delete "
                "naming one run that is still active), the proxy splits the callers in halves and "
                "resends until each failing request stands alone with dstack's own answer to it.",
            ),
            "",
        ]
    )
