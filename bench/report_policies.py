"""docs/measurements.md, section 1 and the targets table: the flush policies side by side on
dstack 0.22.5 (issue 9's targets), and the pass-through and memory targets."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .policies import PolicyFigures, PolicyResults
from .report_passthrough import passthrough_figures
from .report_text import para, yes
from .results import Run
from .stats import median_interval
from .tools import pct
from .workload import Measured

POLICY_PLOT = "bench-policies.png"


@dataclass(frozen=True)
class LoneFigures:
    """A lone stop through one target, in ms; the added figures over direct (not for direct)."""

    p50: float
    p99: float
    n: int
    added_p50: float = 0.0  # difference of the percentiles
    added_p99: float = 0.0
    paired: float = 0.0  # median of the paired differences (adjacent in time)
    paired_low: float = 0.0  # its 95% bootstrap interval
    paired_high: float = 0.0


def lone_figures(run: Run, upstream: str = "dstack") -> dict[str, LoneFigures]:
    """`policy_lone_figures` of the run's policies on dstack 0.22.5."""
    return policy_lone_figures(run.policies, upstream)


def policy_lone_figures(pol: PolicyResults, upstream: str = "dstack") -> dict[str, LoneFigures]:
    """p50/p99 of the lone stop per target, what each policy adds over direct (difference of
    the percentiles), and the median of the paired differences (adjacent in time) with its 95%
    bootstrap interval.

    `upstream`: "dstack" (the real server, fresh active runs; one direct series interleaved
    with every policy), "unknown" (the real server, runs that do not exist) or "instant" (an
    upstream that answers at once; a direct series per policy, from its block).
    """
    figures = pol.policies
    if upstream == "dstack":
        direct_of = {name: pol.direct_lone_ms for name in figures}
        pooled, series = pol.direct_lone_ms, {n: f.lone_ms for n, f in figures.items()}
    elif upstream == "unknown":
        direct_of = {name: pol.direct_unknown_ms for name in figures}
        pooled, series = pol.direct_unknown_ms, {n: f.unknown_ms for n, f in figures.items()}
    else:
        direct_of = {n: f.direct_instant_ms for n, f in figures.items()}
        pooled = [x for name in figures for x in direct_of[name]]
        series = {n: f.lone_instant_ms for n, f in figures.items()}
    out = {"direct": LoneFigures(pct(pooled, 50), pct(pooled, 99), len(pooled))}
    for name in figures:
        s, direct = series[name], direct_of[name]
        differences = [a - b for a, b in zip(s, direct, strict=True)]
        low, high = median_interval(differences)
        out[name] = LoneFigures(
            p50=pct(s, 50),
            p99=pct(s, 99),
            n=len(s),
            added_p50=pct(s, 50) - pct(direct, 50),
            added_p99=pct(s, 99) - pct(direct, 99),
            paired=statistics.median(differences),
            paired_low=low,
            paired_high=high,
        )
    return out


def paired_interval(fig: LoneFigures, digits: int = 1) -> str:
    """`+1.7 [-0.5, +3.9]`: the paired median and its 95% interval."""
    return f"{fig.paired:+.{digits}f} [{fig.paired_low:+.{digits}f}, {fig.paired_high:+.{digits}f}]"


def _worst_calls(rows: list[Measured]) -> int:
    return max(r.upstream_calls for r in rows)


def median_wall(rows: list[Measured]) -> float:
    return statistics.median(r.wall_s for r in rows)


def bound_100(pol: PolicyResults) -> float:
    """One direct 100-name stop plus 100 requests against a server that answers at once."""
    return median_wall(pol.direct_batch_100) + statistics.median(pol.fast_100_s)


def targets(run: Run) -> list[tuple[str, str, str, bool]]:
    """(target, where, measured, met) for every target of the issue, one row per policy."""
    rows = []
    lone, instant = lone_figures(run), lone_figures(run, "instant")
    unknown = lone_figures(run, "unknown")
    bound = bound_100(run.policies)
    for name, fig in run.policies.policies.items():
        rows += [
            (
                "a lone stop adds ≤ 1 ms at p50 (real server, fresh active runs)",
                name,
                f"{lone[name].added_p50:+.1f} ms; paired {paired_interval(lone[name])}",
                lone[name].added_p50 <= 1.0,
            ),
            (
                "a lone stop adds ≤ 1 ms at p50 (real server, unknown runs)",
                name,
                f"{unknown[name].added_p50:+.2f} ms; paired {paired_interval(unknown[name], 2)}",
                unknown[name].added_p50 <= 1.0,
            ),
            (
                "a lone stop adds ≤ 1 ms at p50 (instant upstream)",
                name,
                f"{instant[name].added_p50:+.2f} ms",
                instant[name].added_p50 <= 1.0,
            ),
            (
                "20 at once: ≤ 2 calls (worst round)",
                name,
                f"{_worst_calls(fig.at_once_20)}",
                _worst_calls(fig.at_once_20) <= 2,
            ),
            (
                "20 over 6 connections: ≤ 5 calls (worst round)",
                name,
                f"{_worst_calls(fig.six_connections_20)}",
                _worst_calls(fig.six_connections_20) <= 5,
            ),
            (
                f"N = 100 at once within {bound:.3f} s (median round; worst)",
                name,
                f"{median_wall(fig.at_once_100):.3f} s; "
                f"{max(r.wall_s for r in fig.at_once_100):.3f} s",
                median_wall(fig.at_once_100) <= bound,
            ),
        ]
    pt = passthrough_figures(run)["proxy"]
    rows.append(
        (
            "pass-through ≥ 95% of bare aiohttp req/s",
            "default config",
            f"{pt.vs_bare:.0%} (median of per-round ratios)",
            pt.vs_bare >= 0.95,
        )
    )
    rows.append(
        (
            "pass-through ≥ 95% of bare aiohttp, per CPU-second",
            "default config",
            f"{pt.cpu_vs_bare:.0%} ({pt.cpu_us:.0f} µs of CPU per request)",
            pt.cpu_vs_bare >= 0.95,
        )
    )
    mem = run.memory_by_target()["proxy"]
    rows.append(
        (
            "peak RSS holding 10 000 requests ≤ 150 MB",
            "default config",
            f"{mem.peak_rss_mb:.0f} MB",
            mem.peak_rss_mb <= 150 and mem.answered_ok == mem.requests,
        )
    )
    return rows


def targets_table(run: Run) -> str:
    """The policy targets with one column per policy, then the others, each with its verdict."""
    rows = targets(run)
    policies = list(run.policies.policies)
    default = run.settings.default_policy
    by_target: dict[str, dict[str, str]] = {}
    others = []
    for target, where, measured, ok in rows:
        cell = f"{measured} ({yes(ok)})"
        if where in policies:
            by_target.setdefault(target, {})[where] = cell
        else:
            others.append(f"| {target} | {where} | {measured} | {yes(ok)} |")
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


def shape_cells(fig: PolicyFigures) -> list[str]:
    """Per shape, its rounds' calls and wall times: `2/2; 0.348/0.352`."""
    return [
        "/".join(str(r.upstream_calls) for r in shape)
        + "; "
        + "/".join(f"{r.wall_s:.3f}" for r in shape)
        for shape in shape_rows(fig)
    ]


def shape_rows(fig: PolicyFigures) -> tuple[list[Measured], ...]:
    return (fig.at_once_20, fig.six_connections_20, fig.at_once_100)


def policy_section(run: Run) -> str:
    pol = run.policies
    lone, instant = lone_figures(run), lone_figures(run, "instant")
    unknown = lone_figures(run, "unknown")
    bound = bound_100(run.policies)
    rounds = len(pol.direct_batch_100)
    lines = [
        "| policy | lone stop p50 / p99 ms | added p50 / p99 ms | added, paired median [95%] ms "
        "| unknown run: p50 ms; added p50, paired [95%] ms "
        "| instant upstream: added p50 / p99 ms | 20 at once: calls; wall s "
        "| 20 over 6 conns: calls; wall s | 100 at once: calls; wall s |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| direct (no proxy) | {lone['direct'].p50:.1f} / {lone['direct'].p99:.1f} "
        f"| | | {unknown['direct'].p50:.2f} "
        f"| ({instant['direct'].p50:.2f} / {instant['direct'].p99:.2f}) "
        "| 20 (one call per request) | 20 | 100 |",
    ]
    for name, fig in pol.policies.items():
        cells = shape_cells(fig)
        lines.append(
            f"| {name} | {lone[name].p50:.1f} / {lone[name].p99:.1f} "
            f"| {lone[name].added_p50:+.1f} / {lone[name].added_p99:+.1f} "
            f"| {paired_interval(lone[name])} "
            f"| {unknown[name].p50:.2f}; {unknown[name].added_p50:+.2f}, "
            f"{paired_interval(unknown[name], 2)} "
            f"| {instant[name].added_p50:+.2f} / {instant[name].added_p99:+.2f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(
        [
            para(
                f"A lone stop: {lone['direct'].n} per target, one at a time, each naming a "
                "fresh active run, straight to the server and through every policy's proxy in "
                "rotating order, on kept-alive connections. Added = the proxy's percentile minus "
                "the direct one; the paired median is the median of (proxied - direct) over "
                "requests adjacent in time, with its 95% bootstrap interval: the server's own "
                "jitter (runs retrying in the background) is several milliseconds, so only the "
                f"interval says what the proxy adds. Then {unknown['direct'].n} lone stops "
                "per target naming runs that do not exist, interleaved the same way: dstack "
                "looks them up and answers 200 `null`, with no run churning behind them, so its "
                "jitter is small. The same lone stop against an upstream that answers "
                f"at once ({instant[next(iter(pol.policies))].n} pairs per policy, direct "
                "figures in brackets) shows what the proxy itself adds, without the dstack "
                "server's jitter: pairs of one policy at a time, since a process idle for a "
                "window wakes up slower and would slow every target interleaved with it.",
            ),
            "",
            para(
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
            para(
                "N = 100 bound: one direct 100-name stop "
                f"({median_wall(pol.direct_batch_100):.3f} s) plus 100 one-run stops at once "
                f"against a server that answers at once ({statistics.median(pol.fast_100_s):.3f}"
                f" s) = **{bound:.3f} s**.",
            ),
            "",
            f"![added latency per policy]({POLICY_PLOT})",
        ]
    )
