"""What a hop adds to a lone request (`lone.hops`), per server version: the proxy next to two
reference hops, a bare aiohttp pass-through (the floor of an aiohttp hop) and nginx."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .compare import VersionResults
from .compare_cells import LONE_MS, yes
from .lone import HOPS
from .stats import median_interval, pct


@dataclass(frozen=True)
class HopFigures:
    target: str
    rounds: int
    p50: float
    added_p50: float  # its p50 minus direct's
    paired: float  # median of (this − direct) within a round
    low: float
    high: float


def hop_figures(v: VersionResults) -> list[HopFigures]:
    """Every hop but direct, in HOPS' order; none if not measured."""
    if v.hops is None or not v.hops.ms.get("direct"):
        return []
    direct = v.hops.ms["direct"]
    out = []
    for target in HOPS[1:]:
        if not (ms := v.hops.ms.get(target)):  # a run from before this hop was measured
            continue
        diffs = [a - b for a, b in zip(ms, direct, strict=True)]
        low, high = median_interval(diffs)
        added = pct(ms, 50) - pct(direct, 50)
        out.append(
            HopFigures(target, len(ms), pct(ms, 50), added, statistics.median(diffs), low, high)
        )
    return out


def hop_table(v: VersionResults) -> list[str]:
    figures = hop_figures(v)
    if not figures or v.hops is None:
        return []
    rounds = figures[0].rounds
    lines = [
        f"What a hop adds: {rounds} rounds of one lone stop per target, each naming a run that "
        "does not exist (dstack looks it up and answers 200 `null`; no run churns behind it, so "
        "its own jitter is small), the order rotating from round to round, on kept-alive "
        "connections. The bare aiohttp pass-through on uvloop (`bench/bare_passthrough.py`: no "
        "logging, metrics, header policy or limits) is the floor of any aiohttp hop. Below it "
        "(`bench/raw_hops.py`, neither one a proxy): the same aiohttp server with a raw "
        "upstream connection in place of aiohttp's client, and uvloop with httptools alone, "
        "about the least a Python hop can do. nginx is the floor of any hop at all.",
        "",
        f"| target | p50 ms | added p50 ms | paired median [95%] ms | ≤ {LONE_MS:g} ms |",
        "|---|---|---|---|---|",
        f"| direct | {pct(v.hops.ms['direct'], 50):.2f} | | | |",
    ]
    for f in figures:
        lines.append(
            f"| {f.target} | {f.p50:.2f} | {f.added_p50:+.2f} "
            f"| {f.paired:+.2f} [{f.low:+.2f}, {f.high:+.2f}] | {yes(f.added_p50 <= LONE_MS)} |"
        )
    return lines


def hop_summary(v: VersionResults) -> str:
    """The targets' summary: the proxy on an absent run, next to the two floors."""
    by = {f.target: f for f in hop_figures(v)}
    if "proxy" not in by:
        return ""
    proxy, bare, nginx = by["proxy"], by["bare aiohttp"], by["nginx"]
    raw = by.get("uvloop + httptools")
    return (
        f"absent run: stop {proxy.added_p50:+.2f} ms, paired {proxy.paired:+.2f} "
        f"[{proxy.low:+.2f}, {proxy.high:+.2f}] ({yes(proxy.added_p50 <= LONE_MS)}); "
        f"a bare aiohttp hop {bare.added_p50:+.2f}, "
        + (f"uvloop + httptools {raw.added_p50:+.2f}, " if raw is not None else "")
        + f"nginx {nginx.added_p50:+.2f}"
    )
