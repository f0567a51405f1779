"""The per-version section of docs/measurements.md (issue 14: targets of point 2, the seed's
claims of point 3, what each phase cost the server) and the targets' summary, from a
`compare.Comparison`."""

from __future__ import annotations

from harness.versions import LEGACY_VERSION

from .compare import Comparison, VersionResults
from .compare_cells import (
    BROWSER_CALLS,
    FLOOR_NAMES,
    LONE_MS,
    VERSIONS_PLOT,
    WAY_NAMES,
    BoundRow,
    Cell,
    bound_rows,
    cells,
    lone_figures,
    yes,
)
from .compare_claims import claims_table
from .compare_hops import hop_summary, hop_table
from .report_text import para
from .workload import LEADER_FLOOR, ROUNDS_FLOOR

NAMES = {**WAY_NAMES, **FLOOR_NAMES}


def _spans(rows: list[BoundRow]) -> bool:
    """Whether the run recorded the calls as spans on the server's clock."""
    return any(r.proxy.call_spans_ms for r in rows)


def _from_callers(rows: list[BoundRow]) -> bool:
    """Whether the spans can be shown from the callers' start (`bulk.Phase.first_call_ms`)."""
    return any(r.proxy.first_call_ms is not None for r in rows)


def _at_once_table(c: Comparison, v: VersionResults) -> list[str]:
    rows = bound_rows(c, v)
    floors, spans, pipeline = any(r.floor for r in rows), _spans(rows), _pipeline(rows)
    calls = _call_spans if spans else _call_ms
    tail = "; leader + rest |" if floors else " |"
    lines = [
        "| op | N | direct singles: s (calls) | proxy: s, worst (calls) | one N-name call: s "
        "| client cost s | bound s | proxy ≤ bound | proxy < direct "
        + ("| leader + rest: s | leader + rest ≤ bound " if floors else "")
        + (
            "| server's calls, ms from "
            + ("the callers' start" if _from_callers(rows) else "the first one's start")
            + ": proxy's; one call"
            if spans
            else "| server ms per call: proxy's; one call"
        )
        + tail
        + (
            " rounds with dstack's pipeline at work during the calls: proxy; one call"
            if pipeline
            else ""
        )
        + (tail if pipeline else ""),
        "|---" * (10 + 2 * floors + pipeline) + "|",
    ]
    for r in rows:
        floor = (
            (
                f"| {r.floor.wall_s:.3f} | {yes(bool(r.floor_within_bound))} "
                if r.floor
                else "| — | — "
            )
            if floors
            else ""
        )
        floor_ms = (f"; {calls(r.floor)}" if r.floor else "; —") if floors else ""
        floor_pipeline = (f"; {_at_work(r.floor)}" if r.floor else "; —") if floors else ""
        lines.append(
            f"| {r.op} | {r.n} | {r.direct.wall_s:.3f} ({r.direct.calls}) "
            f"| {r.proxy.wall_s:.3f}, {r.proxy.worst_s:.3f} ({r.proxy.calls}) "
            f"| {r.batch.wall_s:.3f} | {r.cost_s:.3f} | {r.bound_s:.3f} "
            f"| {yes(r.within_bound)} | {yes(r.below_direct)} {floor}"
            f"| {calls(r.proxy)}; {calls(r.batch)}{floor_ms} |"
            + (f" {_at_work(r.proxy)}; {_at_work(r.batch)}{floor_pipeline} |" if pipeline else "")
        )
    return lines


def _pipeline(rows: list[BoundRow]) -> bool:
    """Whether the run counted the pipeline's records during the calls (`bulk.pipeline_lines`)."""
    return any(r.proxy.pipeline_rounds is not None for r in rows)


def _at_work(cell: Cell) -> str:
    """In how many of the cell's rounds dstack's pipeline wrote records during its calls."""
    return "—" if cell.pipeline_rounds is None else f"{cell.pipeline_rounds} of {cell.rounds}"


def _call_ms(cell: Cell) -> str:
    """The server's time for each call, in the order they finished (`bulk.Phase.call_ms`)."""
    ms = cell.call_ms
    return " + ".join(f"{x:.0f}" for x in ms) if len(ms) <= 4 else f"{len(ms)} calls"


def _call_spans(cell: Cell) -> str:
    """Each call's start and end on the server, in the order they finished
    (`bulk.Phase.call_spans_ms`): which calls were in the air together. In ms from the callers'
    start where the run recorded it (`first_call_ms`), so the time the requests took to reach
    the server shows too; else from the first call's start."""
    spans = cell.call_spans_ms
    if not spans:
        return _call_ms(cell)
    if len(spans) > 4:
        return f"{len(spans)} calls"
    shift = cell.first_call_ms or 0.0
    return ", ".join(f"{start + shift:.0f}–{end + shift:.0f}" for start, end in spans)


def _browser_table(v: VersionResults) -> list[str]:
    by = cells(v.browser)
    floors = any(way == ROUNDS_FLOOR for _, _, way in by)
    lines = [
        "| op | direct: s (calls) | proxy: s, worst (calls, worst) | proxy < direct "
        f"| ≤ {BROWSER_CALLS} calls (worst round) "
        + ("| one call a round: s (calls) | one call a round < direct |" if floors else "|"),
        "|---" * (7 if floors else 5) + "|",
    ]
    for op in ("stop", "delete"):
        d, p = by.get((op, 20, "direct singles")), by.get((op, 20, "proxy singles"))
        if d is None or p is None:
            continue
        f = by.get((op, 20, ROUNDS_FLOOR))
        floor = (
            (f"| {f.wall_s:.3f} ({f.calls}) | {yes(f.wall_s < d.wall_s)} |" if f else "| — | — |")
            if floors
            else "|"
        )
        lines.append(
            f"| {op} | {d.wall_s:.3f} ({d.calls}) | {p.wall_s:.3f}, {p.worst_s:.3f} "
            f"({p.calls}, {p.worst_calls}) | {yes(p.wall_s < d.wall_s)} "
            f"| {yes(p.worst_calls <= BROWSER_CALLS)} {floor}"
        )
    return lines


def _lone_table(v: VersionResults) -> list[str]:
    lines = [
        "| op | pairs | direct p50 ms | proxy p50 ms | added p50 | paired median [95%] "
        f"| ≤ {LONE_MS:g} ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in lone_figures(v):
        lines.append(
            f"| {f.op} | {f.n} | {f.direct_p50:.1f} | {f.proxy_p50:.1f} | {f.added_p50:+.2f} "
            f"| {f.paired:+.2f} [{f.low:+.2f}, {f.high:+.2f}] | {yes(f.added_p50 <= LONE_MS)} |"
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
        by.items(), key=lambda kv: (kv[0][0] != "stop", kv[0][1], list(NAMES).index(kv[0][2]))
    ):
        lines.append(
            f"| {op} | {n} | {NAMES[way]} | {x.wall_s:.3f} | {x.non_200} | {x.locked} "
            f"| {x.errors} | {x.cpu_s:.2f} | {x.peak_rss_mb:.0f} ({x.rss_growth_mb:+.0f}) "
            f"| {yes(x.ok)} |"
        )
    return lines


def version_section(c: Comparison, v: VersionResults) -> str:
    settings = c.settings.for_database(v.database)
    measured = settings.rounds_of(v.version) if settings.alone else settings.with_deletes(v.version)
    rounds = ", ".join(f"N = {n}: {r}" for n, r in measured.items())
    alone = sorted(settings.stops_only(v.version))
    rows = bound_rows(c, v)
    fresh = (
        f" Stops at N = {', '.join(map(str, alone))}: each way on a fresh server of its own."
        if alone
        else ""
    )
    return "\n".join(
        [
            f"### dstack {v.label}",
            "",
            para(
                f"N one-run requests at once (rounds: {rounds}; medians, and the proxy's worst "
                "round). Bound = 1.15 × one N-name call + the client's own cost (the same N "
                "requests through a proxy in front of an upstream that answers at once). The last "
                + (
                    "column: each upstream call's start and end on the server, ms from the "
                    + (
                        "callers' start (the client's clock, which the server's log shares on "
                        "this machine)"
                        if _from_callers(rows)
                        else "first call's start"
                    )
                    + ", from its log (the handler's own time, and when its line was written),"
                    if _spans(rows)
                    else "column: the server's own time for each upstream call, from its log,"
                )
                + " in the order they finished (the proxy's: a burst's leader, sent alone as it "
                "came, and the batch beside it), in the median round."
                + (
                    " Its first figure is what the N requests took to reach the server, and the "
                    "wall time less its last figure what answering them took after it had "
                    "answered."
                    if _spans(rows) and _from_callers(rows)
                    else ""
                )
                + fresh
                + (
                    " Leader + rest: the floor of any proxy that sends a lone request at once, "
                    "straight to the server: the first name in a call of its own and the rest in "
                    "one call beside it, at once; where it misses the bound, so must such a "
                    "proxy (docs/design.md, What no proxy can beat)."
                    if any(r.floor for r in rows)
                    else ""
                )
            ),
            "",
            *_at_once_table(c, v),
            "",
            *(para(note) for note in _budget_notes(c, [v]) + _unmeasured(c, v)),
            "",
            *(
                [
                    para(
                        "The browser shape: 20 one-run requests over at most 6 kept-alive "
                        f"connections, each waiting for its answer ({settings.browser_rounds} "
                        "round(s))."
                        + (
                            " One call a round: the floor of any proxy, straight to the server: "
                            "the 20 names in calls of 6, one after another (a connection's next "
                            "request comes only after its answer, so 20 over 6 connections take "
                            "4 upstream calls in sequence however they are merged)."
                            if any(p.way == ROUNDS_FLOOR for p in v.browser)
                            else ""
                        )
                    ),
                    "",
                    *_browser_table(v),
                    "",
                ]
                if v.browser
                else []
            ),
            *(
                [
                    para(
                        "A lone request on a fresh run, direct and through the proxy in "
                        "alternating order; paired median of (proxy − direct) with its 95% "
                        "bootstrap interval."
                    ),
                    "",
                    *_lone_table(v),
                    "",
                ]
                if v.lone
                else []
            ),
            *(para(line) if line.startswith("What") else line for line in hop_table(v)),
            *([""] if v.hops else []),
            "What each phase cost the server (its log and its process tree, /proc):",
            "",
            *_usage_table(v),
            "",
            para(
                f"Time this version took in the run: server start {v.startup_s:.0f} s; "
                + ", ".join(
                    f"{k.replace('_', ' ')} {t / 60:.1f} min" for k, t in v.elapsed_s.items()
                )
                + "."
            ),
        ]
    )


def section(c: Comparison) -> str:
    """The whole section: the claims, then per version the targets and what each phase cost."""
    return "\n\n".join(
        [
            para(
                "Per dstack version, in one run, the proxy at its shipped default (policy "
                f"`{c.policy}`). Upstream calls, locking and errors are read from each server's "
                "own log; CPU and peak RSS from /proc of the server's process tree, sampled every "
                "10 ms while the phase runs. Every stop names fresh active runs; the deletes then "
                "name the same runs, stopped in between (not measured)."
            ),
            "The seed's claims, as the seed states them, next to what was measured:",
            claims_table(c),
            f"![N at once on each version]({VERSIONS_PLOT})",
            *(version_section(c, v) for v in c.versions),
        ]
    )


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
    return f"{len(met)} of {len(rows)} cells; {detail} ({yes(len(met) == len(rows))})"


def _browser_met(v: VersionResults) -> tuple[str, str, str]:
    by = cells(v.browser)
    faster, calls, floors = [], [], []
    for op in ("stop", "delete"):
        d, p = by.get((op, 20, "direct singles")), by.get((op, 20, "proxy singles"))
        if d is None or p is None:
            continue
        faster.append(f"{op} {p.wall_s:.3f} vs {d.wall_s:.3f} s ({yes(p.wall_s < d.wall_s)})")
        calls.append(f"{op} {p.worst_calls} ({yes(p.worst_calls <= BROWSER_CALLS)})")
        if f := by.get((op, 20, ROUNDS_FLOOR)):
            floors.append(f"{op} {f.wall_s:.3f} vs {d.wall_s:.3f} s ({yes(f.wall_s < d.wall_s)})")
    return (
        "; ".join(faster) or "not measured",
        "; ".join(calls) or "not measured",
        "; ".join(floors) or "not measured",
    )


def _floor_met(rows: list[BoundRow]) -> str:
    """How many cells' leader floor meets the bound, and the worst."""
    measured = [r for r in rows if r.floor is not None]
    if not measured:
        return "not measured"
    met = [r for r in measured if r.floor_within_bound]
    worst = max(measured, key=lambda r: r.floor.wall_s / r.bound_s if r.floor else 0.0)
    assert worst.floor is not None
    return (
        f"{len(met)} of {len(measured)} cells; worst {worst.op} N = {worst.n}: "
        f"{worst.floor.wall_s:.3f} s vs {worst.bound_s:.3f} s ({yes(len(met) == len(measured))})"
    )


def targets_summary(c: Comparison) -> str:
    """Issue 14's point 2, one column per server version."""
    rows: dict[str, list[str]] = {
        "N at once: proxy ≤ 1.15 × one N-name call + client cost (median)": [],
        "N at once: proxy < direct singles (median)": [],
        "20 over ≤ 6 connections: proxy < direct (median)": [],
        f"20 over ≤ 6 connections: ≤ {BROWSER_CALLS} upstream calls (worst round)": [],
        f"a lone request adds ≤ {LONE_MS:g} ms at p50": [],
        "floor: N at once, leader + rest straight to the server ≤ the bound (median)": [],
        "floor: 20 over ≤ 6 connections, one call a round < direct (median)": [],
    }
    for v in c.versions:
        bound = bound_rows(c, v)
        faster, calls, rounds_floor = _browser_met(v)
        lone = "; ".join(
            [
                *(
                    f"{f.op} {f.added_p50:+.2f} ms, paired {f.paired:+.2f} "
                    f"[{f.low:+.2f}, {f.high:+.2f}] ({yes(f.added_p50 <= LONE_MS)})"
                    for f in lone_figures(v)
                ),
                *filter(None, [hop_summary(v)]),
            ]
        )
        for target, value in zip(
            rows,
            (
                _cells_met(bound, "bound"),
                _cells_met(bound, "direct"),
                faster,
                calls,
                lone or "not measured",
                _floor_met(bound),
                rounds_floor,
            ),
            strict=True,
        ):
            rows[target].append(value)
    for target in [t for t in rows if t.startswith("floor")]:
        if all(value == "not measured" for value in rows[target]):
            del rows[target]  # a run without the floors (before they were measured)
    head = "| target (stops and deletes) | " + " | ".join(f"dstack {v.label}" for v in c.versions)
    lines = [head + " |", "|---" * (len(c.versions) + 1) + "|"]
    lines += [f"| {t} | " + " | ".join(vals) + " |" for t, vals in rows.items()]
    return "\n".join([*lines, "", *(para(n) for n in _budget_notes(c))])


def _budget_notes(c: Comparison, versions: list[VersionResults] | None = None) -> list[str]:
    notes = []
    for v in c.versions if versions is None else versions:
        settings = c.settings.for_database(v.database)
        if settings is not c.settings:
            sizes = ", ".join(map(str, settings.with_deletes(v.version)))
            alone = ", ".join(map(str, settings.stops_only(v.version)))
            beyond = f"; N = {alone} stops only, each way on a fresh server" if alone else ""
            notes.append(
                f"On dstack {v.label}, only what the seed's claims need, within the bench's "
                f"budget: N = {sizes} at once, stops and deletes{beyond}; no browser shape, no "
                "lone requests."
            )
            continue
        alone = sorted(settings.stops_only(v.version))
        if alone:
            notes.append(
                f"On dstack {v.label}, deletes were measured up to N = "
                f"{c.settings.deletes_up_to.get(v.version, 0)}; N = "
                f"{', '.join(map(str, alone))} are stops only, each way on a fresh server: a "
                "delete needs finished runs, and waiting for this server's pipeline to finish "
                "that many stopped runs does not fit the bench's budget"
                + (
                    " (it finishes about one a second)."
                    if v.version == LEGACY_VERSION
                    else " (it finishes a few a second)."
                )
            )
    return notes


def _unmeasured(c: Comparison, v: VersionResults) -> list[str]:
    """The deletes the run could not measure: where dstack left a stopped run active past the
    set-up's patience (`workload.stop_then_delete`), the delete's cell has fewer rounds."""
    settings = c.settings.for_database(v.database)
    at_once, browser = cells(v.at_once), cells(v.browser)
    # The floors are asked for where the run measured them at all (older runs did not).
    floors = {p.way for p in v.at_once + v.browser} & set(FLOOR_NAMES)
    at_once_ways: tuple[str, ...] = (*WAY_NAMES, *(floors & {LEADER_FLOOR}))
    asked = [
        (f"N = {n} at once", at_once, n, at_once_ways, rounds)
        for n, rounds in settings.with_deletes(v.version).items()
    ]
    if settings.browser_rounds:
        ways: tuple[str, ...] = ("direct singles", "proxy singles", *(floors & {ROUNDS_FLOOR}))
        asked.append(("20 over 6 connections", browser, 20, ways, settings.browser_rounds))
    short = []
    for shape, got, n, ways, rounds in asked:
        for way in ways:
            x = got.get(("delete", n, way))
            if (measured := x.rounds if x else 0) < rounds:
                short.append(f"delete, {shape}, {NAMES[way]}: {measured} of {rounds} rounds")
    if not short:
        return []
    return [
        "Deletes not measured, because dstack left a stopped run active after the set-up had "
        "re-stopped it for 5 min and then aborted it for 2 more (the stop race, "
        "docs/dstack-api.md); a delete naming an active run is refused whole: "
        + "; ".join(short)
        + "."
    ]
