"""Issue 14's figures from a `compare.Comparison`: per (op, N, way) the medians over rounds,
the N-at-once bound, and a lone request's added latency."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .bulk import Phase
from .compare import Comparison, VersionResults
from .stats import median_interval, pct
from .workload import LEADER_FLOOR, ROUNDS_FLOOR

BOUND = 1.15  # the proxy within 1.15 x one N-name call plus the client's own cost
BROWSER_CALLS = 5
LONE_MS = 1.0
VERSIONS_PLOT = "bench-versions.png"
WAY_NAMES = {"direct singles": "direct singles", "proxy singles": "proxy", "direct batch": "batch"}
# The floors (workload.py), named in the tables; not in every run (older runs, Postgres).
FLOOR_NAMES = {LEADER_FLOOR: "leader + rest", ROUNDS_FLOOR: "one call a round"}


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
    call_ms: list[float]  # the server's time for each of its calls, in the median round
    call_spans_ms: list[tuple[float, float]]  # the same as spans on the server's clock
    # Rounds in which dstack's background pipeline wrote records while the calls were in the air
    # (`bulk.Phase.pipeline_lines`); None where the run did not record it.
    pipeline_rounds: int | None = None
    # The median round's time from the callers' start to its first call in the server
    # (`bulk.Phase.first_call_ms`); None where the run did not record it.
    first_call_ms: float | None = None


def cell(phases: list[Phase]) -> Cell:
    middle = sorted(phases, key=lambda p: p.wall_s)[(len(phases) - 1) // 2]
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
        middle.call_ms,
        middle.call_spans_ms,
        _pipeline_rounds(phases),
        middle.first_call_ms,
    )


def _pipeline_rounds(phases: list[Phase]) -> int | None:
    counts = [p.pipeline_lines for p in phases if p.pipeline_lines is not None]
    return sum(1 for x in counts if x > 0) if counts else None


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


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


@dataclass(frozen=True)
class BoundRow:
    op: str
    n: int
    direct: Cell
    proxy: Cell
    batch: Cell
    cost_s: float
    floor: Cell | None = None  # the leader's floor (LEADER_FLOOR), where it was measured

    @property
    def bound_s(self) -> float:
        return BOUND * self.batch.wall_s + self.cost_s

    @property
    def within_bound(self) -> bool:
        return self.proxy.wall_s <= self.bound_s

    @property
    def below_direct(self) -> bool:
        return self.proxy.wall_s < self.direct.wall_s

    @property
    def floor_within_bound(self) -> bool | None:
        """Whether a burst's leader beside the rest, straight to the server, meets the bound:
        if not, no proxy that sends a lone request at once can (None: not measured)."""
        return None if self.floor is None else self.floor.wall_s <= self.bound_s


def bound_rows(c: Comparison, v: VersionResults) -> list[BoundRow]:
    by = cells(v.at_once)
    rows = []
    for op in ("stop", "delete"):
        for n in sizes(v):
            keys = [(op, n, w) for w in WAY_NAMES]
            if all(k in by for k in keys):
                d, p, b = (by[k] for k in keys)
                floor = by.get((op, n, LEADER_FLOOR))
                rows.append(BoundRow(op, n, d, p, b, client_cost_s(c, op, n), floor))
    return rows


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
