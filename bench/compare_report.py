"""The per-version sections of docs/measurements.md (targets of issue 14's point 2, the seed's
claims of point 3) and the README's headline, from a `compare.Comparison`."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .bulk import Phase
from .compare import Comparison, VersionResults
from .stats import median_interval, pct

BOUND = 1.15  # the proxy within 1.15 x one N-name call plus the client's own cost
BROWSER_CALLS = 5
LONE_MS = 1.0
VERSIONS_PLOT = "bench-versions.png"
WAY_NAMES = {"direct singles": "direct singles", "proxy singles": "proxy", "direct batch": "batch"}


@dataclass(frozen=True)
class Cell:
    """One (op, N, way) over its rounds: medians, and the worst round where it matters."""

    rounds: int
    wall_s: float
    worst_s: float
    calls: int  # median
    worst_calls: int
    non_200: int  # summed over rounds
    locked: int  # summed
    errors: int  # summed
    cpu_s: float  # median
    peak_rss_mb: float  # median
    rss_growth_mb: float  # median of peak minus the RSS at the start of the phase
    ok: bool  # every round


def cell(phases: list[Phase]) -> Cell:
    return Cell(
        len(phases),
        statistics.median(p.wall_s for p in phases),
        max(p.wall_s for p in phases),
        round(statistics.median(p.calls for p in phases)),
        max(p.calls for p in phases),
        sum(p.non_200 for p in phases),
        sum(p.locked for p in phases),
        sum(p.errors for p in phases),
        statistics.median(p.cpu_s for p in phases),
        statistics.median(p.peak_rss_mb for p in phases),
        statistics.median(p.peak_rss_mb - p.start_rss_mb for p in phases),
        all(p.ok for p in phases),
    )


def cells(phases: list[Phase]) -> dict[tuple[str, int, str], Cell]:
    """(op, N, way) -> Cell."""
    groups: dict[tuple[str, int, str], list[Phase]] = {}
    for p in phases:
        groups.setdefault((p.op, p.n, p.way), []).append(p)
    return {k: cell(v) for k, v in groups.items()}


def sizes(v: VersionResults) -> list[int]:
    return sorted({p.n for p in v.at_once})


def client_cost_s(c: Comparison, op: str, n: int) -> float:
    """The median of N one-run requests through the proxy against an instant upstream."""
    for cost in c.client_cost:
        if cost.op == op and cost.n == n and cost.proxy_s:
            return statistics.median(cost.proxy_s)
    return 0.0


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


@dataclass(frozen=True)
class BoundRow:
    op: str
    n: int
    direct: Cell
    proxy: Cell
    batch: Cell
    cost_s: float

    @property
    def bound_s(self) -> float:
        return BOUND * self.batch.wall_s + self.cost_s

    @property
    def within_bound(self) -> bool:
        return self.proxy.wall_s <= self.bound_s

    @property
    def below_direct(self) -> bool:
        return self.proxy.wall_s < self.direct.wall_s


def bound_rows(c: Comparison, v: VersionResults) -> list[BoundRow]:
    by = cells(v.at_once)
    rows = []
    for op in ("stop", "delete"):
        for n in sizes(v):
            keys = [(op, n, w) for w in WAY_NAMES]
            if all(k in by for k in keys):
                d, p, b = (by[k] for k in keys)
                rows.append(BoundRow(op, n, d, p, b, client_cost_s(c, op, n)))
    return rows


def _at_once_table(c: Comparison, v: VersionResults) -> list[str]:
    lines = [
        "| op | N | direct singles: s (calls) | proxy: s, worst (calls) | one N-name call: s "
        "| client cost s | bound s | proxy ≤ bound | proxy < direct |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in bound_rows(c, v):
        lines.append(
            f"| {r.op} | {r.n} | {r.direct.wall_s:.3f} ({r.direct.calls}) "
            f"| {r.proxy.wall_s:.3f}, {r.proxy.worst_s:.3f} ({r.proxy.calls}) "
            f"| {r.batch.wall_s:.3f} | {r.cost_s:.3f} | {r.bound_s:.3f} "
            f"| {_yes(r.within_bound)} | {_yes(r.below_direct)} |"
        )
    return lines


def _browser_table(v: VersionResults) -> list[str]:
    by = cells(v.browser)
    lines = [
        "| op | direct: s (calls) | proxy: s, worst (calls, worst) | proxy < direct "
        f"| ≤ {BROWSER_CALLS} calls (worst round) |",
        "|---|---|---|---|---|",
    ]
    for op in ("stop", "delete"):
        d, p = by.get((op, 20, "direct singles")), by.get((op, 20, "proxy singles"))
        if d is None or p is None:
            continue
        lines.append(
            f"| {op} | {d.wall_s:.3f} ({d.calls}) | {p.wall_s:.3f}, {p.worst_s:.3f} "
            f"({p.calls}, {p.worst_calls}) | {_yes(p.wall_s < d.wall_s)} "
            f"| {_yes(p.worst_calls <= BROWSER_CALLS)} |"
        )
    return lines


@dataclass(frozen=True)
class LoneFigures:
    op: str
    n: int
    direct_p50: float
    proxy_p50: float
    paired: float
    low: float
    high: float

    @property
    def added_p50(self) -> float:
        return self.proxy_p50 - self.direct_p50


def lone_figures(v: VersionResults) -> list[LoneFigures]:
    out = []
    for pairs in v.lone:
        if not pairs.direct_ms:
            continue
        diffs = [a - b for a, b in zip(pairs.proxy_ms, pairs.direct_ms, strict=True)]
        low, high = median_interval(diffs)
        out.append(
            LoneFigures(
                pairs.op,
                len(diffs),
                pct(pairs.direct_ms, 50),
                pct(pairs.proxy_ms, 50),
                statistics.median(diffs),
                low,
                high,
            )
        )
    return out


def _lone_table(v: VersionResults) -> list[str]:
    lines = [
        "| op | pairs | direct p50 ms | proxy p50 ms | added p50 | paired median [95%] "
        f"| ≤ {LONE_MS:g} ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in lone_figures(v):
        lines.append(
            f"| {f.op} | {f.n} | {f.direct_p50:.1f} | {f.proxy_p50:.1f} | {f.added_p50:+.2f} "
            f"| {f.paired:+.2f} [{f.low:+.2f}, {f.high:+.2f}] | {_yes(f.added_p50 <= LONE_MS)} |"
        )
    return lines


def _usage_table(v: VersionResults) -> list[str]:
    by = cells(v.at_once)
    lines = [
        '| op | N | way | s | non-200 | "database is locked" | other errors | server CPU s '
        "| peak RSS MB (growth) | all ok |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (op, n, way), x in sorted(
        by.items(), key=lambda kv: (kv[0][0] != "stop", kv[0][1], list(WAY_NAMES).index(kv[0][2]))
    ):
        lines.append(
            f"| {op} | {n} | {WAY_NAMES[way]} | {x.wall_s:.3f} | {x.non_200} | {x.locked} "
            f"| {x.errors} | {x.cpu_s:.2f} | {x.peak_rss_mb:.0f} ({x.rss_growth_mb:+.0f}) "
            f"| {_yes(x.ok)} |"
        )
    return lines


def version_section(c: Comparison, v: VersionResults) -> str:
    rounds = ", ".join(f"N = {n}: {r}" for n, r in c.settings.rounds.items())
    return "\n".join(
        [
            f"### dstack {v.label}",
            "",
            f"N one-run requests at once (rounds: {rounds}; medians, the proxy's worst round "
            "too). Bound = 1.15 × one N-name call + the client's own cost (the same N requests "
            "through a proxy in front of an upstream that answers at once).",
            "",
            *_at_once_table(c, v),
            "",
            *_budget_notes(Comparison(c.policy, c.settings, [v], c.client_cost, 0.0)),
            "",
            f"The browser shape: 20 one-run requests over at most 6 kept-alive connections, "
            f"each waiting for its answer ({c.settings.browser_rounds} round(s)).",
            "",
            *_browser_table(v),
            "",
            "A lone request on a fresh run, direct and through the proxy in alternating order; "
            "paired median of (proxy − direct) with its 95% bootstrap interval.",
            "",
            *_lone_table(v),
            "",
            "What each phase cost the server (its log and its process tree, /proc):",
            "",
            *_usage_table(v),
        ]
    )


@dataclass(frozen=True)
class Claim:
    claim: str
    version: str
    measured: str
    holds: str  # "yes", "**no**", or why it cannot be said


def _pct_less(new: float, old: float) -> str:
    change = 1 - new / old
    return f"{change:.0%} less" if change >= 0 else f"{-change:.0%} more"


def _claim_time(c: Comparison, v: VersionResults) -> Claim:
    text = "about 80% less request time for 10 runs"
    by = cells(v.at_once)
    parts, holds = [], True
    for op in ("stop", "delete"):
        keys = [(op, 10, w) for w in WAY_NAMES]
        if not all(k in by for k in keys):
            return Claim(text, v.label, "N = 10 not measured in this run", "not measured")
        d, p, b = (by[k] for k in keys)
        saved = 1 - p.wall_s / d.wall_s
        holds = holds and saved >= 0.75
        parts.append(
            f"{op}: {d.wall_s:.3f} → {p.wall_s:.3f} s ({_pct_less(p.wall_s, d.wall_s)}); one "
            f"10-name call {b.wall_s:.3f} s ({_pct_less(b.wall_s, d.wall_s)}, the most any "
            "batching can save)"
        )
    return Claim(text, v.label, "; ".join(parts), _yes(holds))


def _claim_locked(v: VersionResults) -> Claim:
    text = 'no "database is locked" at 50'
    by = cells(v.at_once)
    if ("stop", 50, "proxy singles") not in by:
        return Claim(text, v.label, "N = 50 not measured in this run", "not measured")
    proxy = sum(by[(op, 50, "proxy singles")].locked for op in ("stop", "delete"))
    direct = sum(by[(op, 50, "direct singles")].locked for op in ("stop", "delete"))
    errors = sum(by[(op, 50, w)].errors for op in ("stop", "delete") for w in WAY_NAMES)
    measured = (
        f"locked lines at N = 50, stops and deletes: proxy {proxy}, direct singles {direct}; "
        f"other server errors (every way) {errors}"
    )
    if proxy == 0 and direct == 0:
        measured += "; direct did not lock either, so there was no locking for the proxy to remove"
    return Claim(text, v.label, measured, _yes(proxy == 0))


def _claim_usage(v: VersionResults) -> Claim:
    text = "less server CPU and memory at 100 and more"
    by = cells(v.at_once)
    parts, holds = [], True
    for op in ("stop", "delete"):
        for n in (x for x in sizes(v) if x >= 100):
            d, p = by.get((op, n, "direct singles")), by.get((op, n, "proxy singles"))
            if d is None or p is None:
                continue
            holds = holds and p.cpu_s < d.cpu_s and p.peak_rss_mb < d.peak_rss_mb
            parts.append(
                f"{op} N = {n}: CPU {d.cpu_s:.2f} → {p.cpu_s:.2f} s, peak RSS "
                f"{d.peak_rss_mb:.0f} → {p.peak_rss_mb:.0f} MB"
            )
    if not parts:
        return Claim(text, v.label, "N ≥ 100 not measured in this run", "not measured")
    return Claim(text, v.label, "; ".join(parts), _yes(holds))


def claims(c: Comparison) -> list[Claim]:
    return [
        claim
        for v in c.versions
        for claim in (_claim_time(c, v), _claim_locked(v), _claim_usage(v))
    ]


def claims_table(c: Comparison) -> str:
    lines = [
        "| the seed's claim | dstack | measured (direct → proxy) | holds |",
        "|---|---|---|---|",
    ]
    lines += [f"| {x.claim} | {x.version} | {x.measured} | {x.holds} |" for x in claims(c)]
    return "\n".join(lines)


def section(c: Comparison) -> str:
    """The whole section: the claims, then per version the targets and what each phase cost."""
    return "\n\n".join(
        [
            "Per dstack version, in one run, the proxy at its shipped default (policy "
            f"`{c.policy}`). Upstream calls, locking and errors are read from each server's own "
            "log; CPU and peak RSS from /proc of the server's process tree, sampled every 10 ms "
            "while the phase runs. Every stop names fresh active runs; the deletes then name the "
            "same runs, stopped in between (not measured).",
            "The seed's claims, as the seed states them, next to what was measured:",
            claims_table(c),
            f"![N at once on each version]({VERSIONS_PLOT})",
            *(version_section(c, v) for v in c.versions),
        ]
    )


def headline(c: Comparison) -> list[str]:
    """The README's bullets, from the first version measured (0.18.40)."""
    if not c.versions:
        return []
    v = c.versions[0]
    by = cells(v.at_once)
    out = []
    for n in (min(sizes(v)), max(sizes(v))) if sizes(v) else ():
        keys = [("stop", n, w) for w in WAY_NAMES]
        if not all(k in by for k in keys):
            continue
        d, p, b = (by[k] for k in keys)
        out.append(
            f"- dstack {v.label}, {n} one-run stops at once: {d.wall_s:.2f} s and {d.calls} "
            f"calls straight to dstack; {p.wall_s:.2f} s and {p.calls} calls through the proxy; "
            f"one direct {n}-name stop {b.wall_s:.2f} s. Server CPU {d.cpu_s:.2f} → "
            f"{p.cpu_s:.2f} s."
        )
    return out


def _cells_met(rows: list[BoundRow], test: str) -> str:
    if not rows:
        return "not measured"
    met = [r for r in rows if (r.within_bound if test == "bound" else r.below_direct)]
    if test == "bound":
        worst = max(rows, key=lambda r: r.proxy.wall_s / r.bound_s)
        detail = (
            f"worst {worst.op} N = {worst.n}: {worst.proxy.wall_s:.3f} s vs {worst.bound_s:.3f} s"
        )
    else:
        worst = max(rows, key=lambda r: r.proxy.wall_s / r.direct.wall_s)
        detail = (
            f"worst {worst.op} N = {worst.n}: {worst.proxy.wall_s:.3f} s vs direct "
            f"{worst.direct.wall_s:.3f} s"
        )
    return f"{len(met)} of {len(rows)} cells; {detail} ({_yes(len(met) == len(rows))})"


def _browser_met(v: VersionResults) -> tuple[str, str]:
    by = cells(v.browser)
    faster, calls = [], []
    for op in ("stop", "delete"):
        d, p = by.get((op, 20, "direct singles")), by.get((op, 20, "proxy singles"))
        if d is None or p is None:
            continue
        faster.append(f"{op} {p.wall_s:.3f} vs {d.wall_s:.3f} s ({_yes(p.wall_s < d.wall_s)})")
        calls.append(f"{op} {p.worst_calls} ({_yes(p.worst_calls <= BROWSER_CALLS)})")
    return "; ".join(faster) or "not measured", "; ".join(calls) or "not measured"


def targets_summary(c: Comparison) -> str:
    """Issue 14's point 2, one column per server version."""
    rows: dict[str, list[str]] = {
        "N at once: proxy ≤ 1.15 × one N-name call + client cost (median)": [],
        "N at once: proxy < direct singles (median)": [],
        "20 over ≤ 6 connections: proxy < direct (median)": [],
        f"20 over ≤ 6 connections: ≤ {BROWSER_CALLS} upstream calls (worst round)": [],
        f"a lone request adds ≤ {LONE_MS:g} ms at p50": [],
    }
    for v in c.versions:
        bound = bound_rows(c, v)
        faster, calls = _browser_met(v)
        lone = "; ".join(
            f"{f.op} {f.added_p50:+.2f} ms, paired {f.paired:+.2f} [{f.low:+.2f}, {f.high:+.2f}] "
            f"({_yes(f.added_p50 <= LONE_MS)})"
            for f in lone_figures(v)
        )
        for target, value in zip(
            rows,
            (
                _cells_met(bound, "bound"),
                _cells_met(bound, "direct"),
                faster,
                calls,
                lone or "not measured",
            ),
            strict=True,
        ):
            rows[target].append(value)
    head = "| target (stops and deletes) | " + " | ".join(f"dstack {v.label}" for v in c.versions)
    lines = [head + " |", "|---" * (len(c.versions) + 1) + "|"]
    lines += [f"| {t} | " + " | ".join(vals) + " |" for t, vals in rows.items()]
    return "\n".join([*lines, "", *_budget_notes(c)])


def _budget_notes(c: Comparison) -> list[str]:
    notes = []
    for v in c.versions:
        alone = sorted(c.settings.stops_only(v.version))
        if alone:
            notes.append(
                f"On dstack {v.label}, deletes were measured up to N = "
                f"{c.settings.deletes_up_to.get(v.version, 0)}; N = "
                f"{', '.join(map(str, alone))} are stops only, each way on a fresh server: a "
                "delete needs finished runs, and this server finishes about one stopped run a "
                "second, more than the bench's budget allows at those N."
            )
    return notes
