"""The seed's claims (issue 14, point 3) next to what was measured, and the README's headline,
from a `compare.Comparison`."""

from __future__ import annotations

from dataclasses import dataclass

from .compare import Comparison, VersionResults
from .compare_cells import (
    WAY_NAMES,
    cells,
    sizes,
    yes,
)
from .report_text import calls


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
    return Claim(text, v.label, "; ".join(parts), yes(holds))


def _claim_locked(v: VersionResults) -> Claim:
    text = 'no "database is locked" at 50'
    by = cells(v.at_once)
    # Deletes at N = 50 may lie beyond the version's deletes' budget (stops only there).
    ops = [op for op in ("stop", "delete") if all((op, 50, w) in by for w in WAY_NAMES)]
    if not ops:
        return Claim(text, v.label, "N = 50 not measured in this run", "not measured")
    proxy = sum(by[(op, 50, "proxy singles")].locked for op in ops)
    direct = sum(by[(op, 50, "direct singles")].locked for op in ops)
    errors = sum(by[(op, 50, w)].errors for op in ops for w in WAY_NAMES)
    measured = (
        f"locked lines at N = 50, {' and '.join(f'{op}s' for op in ops)}: proxy {proxy}, "
        f"direct singles {direct}; other server errors (every way) {errors}"
    )
    if proxy == 0 and direct == 0:
        measured += "; direct did not lock either, so there was no locking for the proxy to remove"
    return Claim(text, v.label, measured, yes(proxy == 0))


def _claim_usage(v: VersionResults) -> Claim:
    text = "less server CPU and memory at 100 and more"
    by = cells(v.at_once)
    parts, holds = [], True
    for op in ("stop", "delete"):
        for n in (x for x in sizes(v) if x >= 100):
            d, p = by.get((op, n, "direct singles")), by.get((op, n, "proxy singles"))
            if d is None or p is None:
                continue
            # Memory: the peak's growth over the phase; the server's RSS drifts up over the run.
            holds = holds and p.cpu_s < d.cpu_s and p.rss_growth_mb < d.rss_growth_mb
            parts.append(
                f"{op} N = {n}: CPU {d.cpu_s:.2f} → {p.cpu_s:.2f} s, peak RSS growth over the "
                f"phase {d.rss_growth_mb:+.0f} → {p.rss_growth_mb:+.0f} MB (peak "
                f"{d.peak_rss_mb:.0f} → {p.peak_rss_mb:.0f} MB)"
            )
    if not parts:
        return Claim(text, v.label, "N ≥ 100 not measured in this run", "not measured")
    return Claim(text, v.label, "; ".join(parts), yes(holds))


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
            f"- dstack {v.label}, {n} one-run stops at once: {d.wall_s:.2f} s and "
            f"{calls(d.calls)} straight to dstack; {p.wall_s:.2f} s and {calls(p.calls)} through "
            "the proxy; "
            f"one direct {n}-name stop {b.wall_s:.2f} s. Server CPU {d.cpu_s:.2f} → "
            f"{p.cpu_s:.2f} s."
        )
    return out
