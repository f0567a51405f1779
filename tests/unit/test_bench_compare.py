"""The per-version benchmark's bookkeeping (bench/compare*.py, bench/usage.py): what it counts in
a server log, the verdicts it writes next to the seed's claims and the targets, and that its
results survive the JSON file. Synthetic figures; no timing is asserted."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from itertools import pairwise
from typing import cast

import pytest

from bench import workload
from bench.bulk import (
    ClientCost,
    Phase,
    first_call_ms,
    pipeline_lines,
    rotated,
    spans_ms,
    ways_at_once,
)
from bench.compare import Comparison, Settings, VersionResults
from bench.compare_cells import bound_rows
from bench.compare_claims import claims
from bench.compare_report import section, targets_summary
from bench.lone import LoneHops, LonePairs
from bench.usage import log_errors
from harness.server import DstackServer, parse_background_stamps, parse_processed_requests

LOG = """\
DEBUG 2026-12-06T02:40:02.236 dstack._internal.server.app Processed request POST http://127.0.0.1:1/api/project/main/runs/stop in 0.026237s. Status: 200
ERROR 2026-12-06T02:40:02.300 dstack._internal.server.app Error processing request
sqlite3.OperationalError: database is locked
Traceback (most recent call last):
DEBUG 2026-12-06T02:40:02.400 dstack._internal.server.app Processed request POST http://127.0.0.1:1/api/project/main/runs/stop in 5.0s. Status: 500
INFO 2026-12-06T02:40:02.500 dstack._internal.server.background run(abc) submitted -> pending, ERROR in name only
"""  # noqa: E501


def test_log_errors_count_locking_apart_from_other_errors() -> None:
    assert log_errors(LOG) == (1, 3)
    assert log_errors("") == (0, 0)


def _phase(way: str, op: str, n: int, wall: float, cpu: float = 1.0, locked: int = 0) -> Phase:
    calls = n if way == "direct singles" else 1
    # The server's time per call: the proxy's burst leader, then its batch.
    call_ms = {"proxy singles": [30.2, 59.4], "direct batch": [45.0]}.get(way, [])
    return Phase(way, op, n, None, wall, calls, 0, True, locked, 0, cpu, 300.0, 290.0, call_ms)  # type: ignore[arg-type]


def _comparison(proxy_10: float, proxy_cpu_100: float, locked_50: int) -> Comparison:
    at_once = []
    for op in ("stop", "delete"):
        at_once += [
            _phase("direct singles", op, 10, 0.44),
            _phase("proxy singles", op, 10, proxy_10),
            _phase("direct batch", op, 10, 0.25),
            _phase("direct singles", op, 50, 0.7),
            _phase("proxy singles", op, 50, 0.5, locked=locked_50),
            _phase("direct batch", op, 50, 0.3),
        ]
    at_once += [
        _phase("direct singles", "stop", 100, 1.5, cpu=1.5),
        _phase("proxy singles", "stop", 100, 0.9, cpu=proxy_cpu_100),
        _phase("direct batch", "stop", 100, 0.4, cpu=0.3),
    ]
    browser = [
        dataclasses.replace(_phase("direct singles", op, 20, 1.1), connections=6)
        for op in ("stop", "delete")
    ] + [
        dataclasses.replace(_phase("proxy singles", op, 20, 1.0), connections=6, calls=4)
        for op in ("stop", "delete")
    ]
    lone = [LonePairs("stop", [10.0, 11.0, 12.0], [10.5, 11.2, 12.4])]
    hops = LoneHops(
        {
            "direct": [10.0, 11.0, 12.0],
            "proxy": [11.2, 12.3, 13.1],
            "bare aiohttp": [11.0, 12.0, 13.0],
            "aiohttp server, raw client": [10.8, 11.8, 12.8],
            "uvloop + httptools": [10.5, 11.5, 12.5],
            "nginx": [10.3, 11.3, 12.3],
        }
    )
    version = VersionResults(
        "0.18.40", "sqlite", 20.0, at_once, browser, lone, {"at_once": 1.0}, hops
    )
    settings = Settings({10: 1, 50: 1, 100: 1}, {"0.18.40": 50}, 1, 3, 1)
    costs = [ClientCost(op, n, [0.02], [0.01]) for op in ("stop", "delete") for n in (10, 50, 100)]
    return Comparison("adaptive", settings, [version], costs, 1.0)


def test_claims_say_plainly_where_they_do_not_hold() -> None:
    slower = {c.claim: c for c in claims(_comparison(0.48, 2.0, 3))}
    assert slower["about 80% less request time for 10 runs"].holds == "**no**"
    assert "9% more" in slower["about 80% less request time for 10 runs"].measured
    assert slower['no "database is locked" at 50'].holds == "**no**"
    assert slower["less server CPU and memory at 100 and more"].holds == "**no**"
    better = {c.claim: c for c in claims(_comparison(0.08, 0.5, 0))}
    assert better["about 80% less request time for 10 runs"].holds == "yes"
    assert better['no "database is locked" at 50'].holds == "yes"
    # Peak RSS was the same for both ways: not less, so the claim still fails.
    assert better["less server CPU and memory at 100 and more"].holds == "**no**"


def test_bound_is_115_percent_of_one_call_plus_the_client_cost() -> None:
    c = _comparison(0.48, 2.0, 0)
    rows = {(r.op, r.n): r for r in bound_rows(c, c.versions[0])}
    assert rows[("stop", 10)].bound_s == 1.15 * 0.25 + 0.02
    assert not rows[("stop", 10)].within_bound and not rows[("stop", 10)].below_direct
    assert rows[("stop", 100)].within_bound is False  # 0.9 > 1.15 * 0.4 + 0.02
    assert ("delete", 100) not in rows  # deletes not measured there: no verdict invented
    summary = targets_summary(c)
    assert "0 of 5 cells" in summary and "deletes were measured up to N = 50" in summary


def test_a_hop_is_judged_on_its_own_median_beside_the_two_floors() -> None:
    c = _comparison(0.48, 2.0, 0)
    text = section(c)
    assert "| proxy | 12.30 | +1.30 | +1.20 [+1.10, +1.30] | **no** |" in text
    assert "| nginx | 11.30 | +0.30 |" in text
    summary = targets_summary(c)
    assert "absent run: stop +1.30 ms, paired +1.20 [+1.10, +1.30] (**no**)" in summary
    assert "a bare aiohttp hop +1.00, uvloop + httptools +0.50, nginx +0.30" in summary
    assert "| aiohttp server, raw client | 11.80 | +0.80 |" in text
    # A run from before the raw hops were measured still reads.
    for target in ("aiohttp server, raw client", "uvloop + httptools"):
        del c.versions[0].hops.ms[target]
    assert "a bare aiohttp hop +1.00, nginx +0.30" in targets_summary(c)
    # Where the proxy's time went, call by call, from the server's log: leader, then batch.
    assert "| yes | 30 + 59; 45 |" in text or "| **no** | 30 + 59; 45 |" in text
    c.versions[0].hops = None
    assert "absent run" not in targets_summary(c) and "What a hop adds" not in section(c)


def test_results_survive_the_json_file() -> None:
    c = _comparison(0.48, 2.0, 1)
    again = Comparison.from_json(json.loads(json.dumps(dataclasses.asdict(c))))
    assert again == c
    assert section(again) == section(c)


def test_every_n_is_measured_once_either_with_its_deletes_or_stops_only() -> None:
    for quick in (True, False):
        s = Settings.make(quick)
        for version in ("0.18.40", "0.22.5"):
            both, alone = s.with_deletes(version), s.stops_only(version)
            assert not set(both) & set(alone)
            assert {**both, **alone} == s.rounds_of(version)
            assert set(s.rounds_of(version)) == set(s.rounds)  # more rounds, never other N
    full = Settings.make(False)
    assert 100 not in full.with_deletes("0.18.40")
    # A median of three wherever the budget allows: one round's noise decided cells.
    assert full.with_deletes("0.22.5")[50] == 3 and full.with_deletes("0.18.40")[20] == 3
    assert full.stops_only("0.22.5") == {200: 3} and full.stops_only("0.18.40") == {100: 3, 200: 3}
    assert full.with_deletes("0.18.40") == {10: 3, 20: 3, 50: 1}


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_the_ways_take_every_place_and_follow_every_other_way_equally_often(count: int) -> None:
    ways = cast(tuple[workload.Way, ...], tuple(f"way {i}" for i in range(count)))
    rounds = count * (2 if count % 2 else 1)
    orders = [rotated(ways, r) for r in range(rounds)]
    assert all(sorted(o) == sorted(ways) for o in orders)
    places = Counter((i, w) for o in orders for i, w in enumerate(o))
    assert set(places.values()) == {rounds // count}
    follows = Counter(pair for o in orders for pair in pairwise(o))
    assert len(follows) == count * (count - 1) and len(set(follows.values())) <= 1


def test_the_proxy_follows_direct_singles_in_one_round_of_three_not_two() -> None:
    """Whatever a way leaves on the server weighs on the way after it: no way follows direct
    singles, the way that leaves the most, more often than the others."""
    orders = [rotated(ways_at_once(True), r) for r in range(3)]
    after = [o[i - 1] for o in orders for i, w in enumerate(o) if w == "proxy singles" and i]
    assert after.count("direct singles") == 1


def test_a_postgres_backed_version_measures_only_the_claims_and_gets_its_own_rows() -> None:
    full = Settings.make(False, ("sqlite", "postgres"))
    pg = full.for_database("postgres")
    assert full.for_database("sqlite") is full
    assert sorted(pg.rounds) == [10, 50, 100]
    assert (pg.browser_rounds, pg.lone_pairs) == (0, 0)
    assert pg.rounds_of("0.22.5") == pg.rounds  # Postgres keeps its budget
    assert pg.stops_only("0.18.40") == {100: 1} and sorted(pg.with_deletes("0.18.40")) == [10, 50]
    assert pg.stops_only("0.22.5") == {} and sorted(pg.with_deletes("0.22.5")) == [10, 50, 100]
    c = _comparison(0.08, 0.5, 0)
    sqlite = c.versions[0]
    on_pg = dataclasses.replace(sqlite, database="postgres", browser=[], lone=[])
    c = dataclasses.replace(c, versions=[sqlite, on_pg])
    assert [(x.version, x.holds) for x in claims(c)][3:] == [
        ("0.18.40 (postgres)", "yes"),
        ("0.18.40 (postgres)", "yes"),
        ("0.18.40 (postgres)", "**no**"),
    ]
    text = section(c)
    assert "| about 80% less request time for 10 runs | 0.18.40 (postgres) |" in text
    assert "On dstack 0.18.40 (postgres), only what the seed's claims need" in text
    flat = " ".join(text.split())
    assert "N = 10, 50 at once, stops and deletes; N = 100 stops only, each way on a fresh" in flat
    assert text.count("The browser shape") == 1 and text.count("A lone request") == 1


def test_the_locking_claim_reads_the_stops_alone_where_deletes_at_50_were_not_measured() -> None:
    c = _comparison(0.08, 0.5, 2)
    v = c.versions[0]
    stops_only = [p for p in v.at_once if not (p.op == "delete" and p.n == 50)]
    c = dataclasses.replace(c, versions=[dataclasses.replace(v, at_once=stops_only)])
    locked = {x.claim: x for x in claims(c)}['no "database is locked" at 50']
    assert locked.holds == "**no**"
    assert locked.measured.startswith("locked lines at N = 50, stops: proxy 2, direct singles 0")


def test_a_delete_the_run_could_not_measure_is_named_not_left_out_silently() -> None:
    c = _comparison(0.08, 0.5, 0)
    assert "Deletes not measured" not in section(c)
    v = c.versions[0]
    lost = [
        p for p in v.at_once if not (p.op == "delete" and p.n == 10 and p.way == "direct singles")
    ]
    c = dataclasses.replace(c, versions=[dataclasses.replace(v, at_once=lost)])
    flat = " ".join(section(c).split())
    assert "Deletes not measured" in flat
    assert "delete, N = 10 at once, direct singles: 0 of 1 rounds." in flat
    # No verdict is drawn for the cell that lacks a way.
    assert ("delete", 10) not in {(r.op, r.n) for r in bound_rows(c, c.versions[0])}


def test_a_run_dstack_leaves_active_costs_its_delete_not_the_bench(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The set-up before a delete re-stops, then aborts, the runs dstack left active; where they
    stay active, the delete is not measured (`None`) and the bench goes on. dstack's race cannot
    be made to happen on demand, so the wait for the runs is replaced here."""
    waits: list[bool] = []
    stuck = 2  # how many of the waits time out

    def wait(
        _server: object, _project: str, names: list[str], *, abort: bool = False, timeout: float
    ) -> None:
        waits.append(abort)
        if len(waits) <= stuck:
            raise TimeoutError(f"runs still active after {timeout:.0f}s: {names}")

    monkeypatch.setattr(workload, "create_active_runs", lambda *_: None)
    monkeypatch.setattr(workload, "stop_runs_until_finished", wait)
    measured: list[str] = []

    def measure(op: str) -> str:
        measured.append(op)
        return op

    server = cast(DstackServer, None)
    assert workload.stop_then_delete(server, "main", ["a"], measure) == ("stop", None)
    assert (measured, waits) == (["stop"], [False, True])
    measured.clear()
    waits.clear()
    stuck = 1  # the abort finishes them: the delete is measured
    assert workload.stop_then_delete(server, "main", ["a"], measure) == ("stop", "delete")
    assert (measured, waits) == (["stop", "delete"], [False, True])


def test_the_floors_send_what_their_proxies_would_at_best() -> None:
    names = [f"r{i}" for i in range(20)]
    leader = workload.bodies_for(workload.LEADER_FLOOR, "stop", names)
    assert leader == [
        {"runs_names": ["r0"], "abort": False},
        {"runs_names": names[1:], "abort": False},
    ]
    rounds = workload.bodies_for(workload.ROUNDS_FLOOR, "delete", names, 6)
    assert [b["runs_names"] for b in rounds] == [names[0:6], names[6:12], names[12:18], names[18:]]
    assert workload.bodies_for(workload.LEADER_FLOOR, "delete", ["a"]) == [{"runs_names": ["a"]}]


def _with_floors(leader_10: float, rounds_stop: float) -> Comparison:
    c = _comparison(0.26, 0.5, 0)
    v = c.versions[0]
    floors = [
        _phase(workload.LEADER_FLOOR, op, n, leader_10 if n == 10 else 0.31)
        for op in ("stop", "delete")
        for n in (10, 50)
    ]
    browser_floor = [
        dataclasses.replace(
            _phase(workload.ROUNDS_FLOOR, op, 20, rounds_stop if op == "stop" else 0.9),
            connections=6,
            calls=4,
        )
        for op in ("stop", "delete")
    ]
    v = dataclasses.replace(v, at_once=v.at_once + floors, browser=v.browser + browser_floor)
    return dataclasses.replace(c, versions=[v])


def test_a_floor_above_the_target_says_no_proxy_of_its_kind_meets_it() -> None:
    """The leader's floor against the bound (1.15 x 0.25 + 0.02 = 0.3075 s at N = 10), and one
    call a round against direct singles in the browser shape (1.1 s)."""
    c = _with_floors(0.35, 1.15)
    rows = {(r.op, r.n): r for r in bound_rows(c, c.versions[0])}
    assert rows[("stop", 10)].floor_within_bound is False
    assert rows[("stop", 50)].floor_within_bound is True  # 0.31 <= 1.15 * 0.3 + 0.02
    summary = targets_summary(c)
    assert "| floor: N at once, leader + rest" in summary
    assert "2 of 4 cells; worst stop N = 10: 0.350 s vs" in summary
    assert "stop 1.150 vs 1.100 s (**no**); delete 0.900 vs 1.100 s (yes)" in summary
    text = section(c)
    # The at-once table shows the floor and its verdict per cell; the browser table, its own.
    assert "| 0.350 | **no** |" in text
    assert "| 1.150 (4) | **no** |" in text and "| 0.900 (4) | yes |" in text
    assert "| stop | 10 | leader + rest | 0.350 |" in text  # what it cost the server
    below = _with_floors(0.28, 1.0)
    assert {(r.op, r.n): r.floor_within_bound for r in bound_rows(below, below.versions[0])}[
        ("stop", 10)
    ] is True
    assert "stop 1.000 vs 1.100 s (yes)" in targets_summary(below)
    # A run without the floors gets no floor rows or columns.
    assert "floor:" not in targets_summary(_comparison(0.26, 0.5, 0))
    assert "leader + rest" not in section(_comparison(0.26, 0.5, 0))


def test_a_floor_delete_the_run_could_not_measure_is_named_too() -> None:
    c = _with_floors(0.35, 1.15)
    assert "Deletes not measured" not in section(c)
    v = c.versions[0]
    lost = [p for p in v.browser if not (p.op == "delete" and p.way == workload.ROUNDS_FLOOR)]
    c = dataclasses.replace(c, versions=[dataclasses.replace(v, browser=lost)])
    flat = " ".join(section(c).split())
    assert "delete, 20 over 6 connections, one call a round: 0 of 1 rounds." in flat


def test_the_calls_are_placed_on_the_servers_clock_from_its_log() -> None:
    """A leader and its batch: when each started and ended, from the line's timestamp (written
    as the handler finished) less the handler's own time."""
    log = (
        "DEBUG 2026-12-07T13:00:00.100 dstack._internal.server.app Processed request POST "
        "http://127.0.0.1:1/api/project/main/runs/delete in 0.060000s. Status: 200\n"
        "DEBUG 2026-12-07T13:00:00.180 dstack._internal.server.app Processed request POST "
        "http://127.0.0.1:1/api/project/main/runs/delete in 0.134000s. Status: 200\n"
    )
    leader, batch = parse_processed_requests(log)
    assert batch.finished_at is not None and leader.finished_at is not None
    assert batch.finished_at - leader.finished_at == pytest.approx(0.080, abs=1e-6)
    assert leader.started_at == pytest.approx(leader.finished_at - 0.060, abs=1e-6)
    # The batch started 6 ms after its leader, and both were in the air together.
    assert spans_ms([leader, batch]) == [
        (pytest.approx(0.0, abs=0.01), pytest.approx(60.0, abs=0.01)),
        (pytest.approx(6.0, abs=0.01), pytest.approx(140.0, abs=0.01)),
    ]
    # A line without a timestamp leaves no span for any call: no half-placed figures.
    bare = parse_processed_requests(log.splitlines()[0].replace("2026-12-07T13:00:00.100 ", ""))
    assert bare[0].finished_at is None and bare[0].started_at is None
    assert spans_ms([leader, *bare]) == [] and spans_ms([]) == []


def test_the_at_once_table_shows_the_calls_in_the_air_together_where_the_run_placed_them() -> None:
    c = _comparison(0.48, 2.0, 0)
    v = c.versions[0]
    spans = {"proxy singles": [(0.0, 30.2), (6.4, 65.8)], "direct batch": [(0.0, 45.0)]}
    placed = [dataclasses.replace(p, call_spans_ms=spans.get(p.way, [])) for p in v.at_once]
    c2 = dataclasses.replace(c, versions=[dataclasses.replace(v, at_once=placed)])
    text = section(c2)
    assert "server's calls, ms from the first one's start: proxy's; one call |" in text
    assert "| 0–30, 6–66; 0–45 |" in text
    assert "each upstream call's start and end on the server" in " ".join(text.split())
    again = Comparison.from_json(json.loads(json.dumps(dataclasses.asdict(c2))))
    assert section(again) == text
    # A run that did not place them keeps the calls' own times.
    assert "| 30 + 59; 45 |" in section(c) and "start and end" not in section(c)


def test_the_first_call_is_placed_against_the_callers_start() -> None:
    """The client's clock and the server's log's are this machine's: the time from the callers'
    start to the first call's start is what the requests took to reach the server."""
    log = (
        "DEBUG 2026-12-07T13:00:00.100 dstack._internal.server.app Processed request POST "
        "http://127.0.0.1:1/api/project/main/runs/stop in 0.060000s. Status: 200\n"
        "DEBUG 2026-12-07T13:00:00.180 dstack._internal.server.app Processed request POST "
        "http://127.0.0.1:1/api/project/main/runs/stop in 0.134000s. Status: 200\n"
    )
    leader, batch = parse_processed_requests(log)
    assert leader.started_at is not None
    callers_started_at = leader.started_at - 0.085  # the leader reached the server 85 ms later
    assert first_call_ms([batch, leader], callers_started_at) == pytest.approx(85.0, abs=0.01)
    assert first_call_ms([batch], callers_started_at) == pytest.approx(91.0, abs=0.01)
    bare = parse_processed_requests(log.splitlines()[0].replace("2026-12-07T13:00:00.100 ", ""))
    assert first_call_ms([batch, *bare], callers_started_at) is None
    assert first_call_ms([], callers_started_at) is None


def test_the_at_once_table_shows_the_calls_from_the_callers_start_where_recorded() -> None:
    c = _comparison(0.48, 2.0, 0)
    v = c.versions[0]
    spans = {"proxy singles": [(0.0, 30.2), (6.4, 65.8)], "direct batch": [(0.0, 45.0)]}
    first = {"proxy singles": 88.0, "direct batch": 2.0}
    placed = [
        dataclasses.replace(p, call_spans_ms=spans.get(p.way, []), first_call_ms=first.get(p.way))
        for p in v.at_once
    ]
    c2 = dataclasses.replace(c, versions=[dataclasses.replace(v, at_once=placed)])
    text = section(c2)
    assert "server's calls, ms from the callers' start: proxy's; one call |" in text
    assert "| 88–118, 94–154; 2–47 |" in text  # the spans above, shifted by each first call
    assert "what the N requests took to reach the server" in " ".join(text.split())
    again = Comparison.from_json(json.loads(json.dumps(dataclasses.asdict(c2))))
    assert section(again) == text
    # Spans recorded without the callers' start stay from the first call's start.
    only_spans = [dataclasses.replace(p, first_call_ms=None) for p in placed]
    c3 = dataclasses.replace(c, versions=[dataclasses.replace(v, at_once=only_spans)])
    assert "| 0–30, 6–66; 0–45 |" in section(c3) and "callers' start" not in section(c3)


def test_the_pipelines_records_are_counted_while_the_calls_are_in_the_air() -> None:
    """dstack's background passes share the server with the calls (docs/dstack-api.md): the
    records they write between the first call's start and the last call's end are counted,
    on either version's logger, and nothing else is."""
    log = (
        "DEBUG 2026-12-07T15:04:35.030 dstack._internal.server.background.tasks.process_runs "
        "run(d3811f)n2-0: processing run\n"
        "DEBUG 2026-12-07T15:04:35.100 dstack._internal.server.app Processed request POST "
        "http://127.0.0.1:1/api/project/main/runs/stop in 0.060000s. Status: 200\n"
        "DEBUG 2026-12-07T15:04:35.120 dstack._internal.server.background.tasks."
        "process_submitted_jobs job(692336)n2-0-0-0: provisioning has started\n"
        "DEBUG 2026-12-07T15:04:35.150 dstack._internal.server.background.pipeline_tasks.runs "
        "run(4ee500)n2-1: processing\n"
        "DEBUG 2026-12-07T15:04:35.160 dstack._internal.server.services.runs run(d3811f)n2-0: "
        "terminating because STOPPED_BY_USER\n"
        "DEBUG 2026-12-07T15:04:35.180 dstack._internal.server.app Processed request POST "
        "http://127.0.0.1:1/api/project/main/runs/stop in 0.134000s. Status: 200\n"
        "DEBUG 2026-12-07T15:04:35.250 dstack._internal.server.background.tasks.process_runs "
        "run(4ee500)n2-1: processing run\n"
    )
    stamps = parse_background_stamps(log)
    assert len(stamps) == 4
    calls = parse_processed_requests(log)
    assert pipeline_lines(calls, stamps) == 2  # 35.120 and 35.150; not 35.030 nor 35.250
    assert pipeline_lines(calls[:1], stamps) == 0  # the leader alone: 35.040 to 35.100
    bare = parse_processed_requests(log.splitlines()[1].replace("2026-12-07T15:04:35.100 ", ""))
    assert pipeline_lines([*calls, *bare], stamps) is None and pipeline_lines([], stamps) is None


def test_the_at_once_table_counts_the_rounds_the_pipeline_worked_through_where_recorded() -> None:
    c = _comparison(0.48, 2.0, 0)
    v = c.versions[0]
    lines = {"proxy singles": 7, "direct batch": 0, "direct singles": 1}
    counted = [dataclasses.replace(p, pipeline_lines=lines[p.way]) for p in v.at_once]
    c2 = dataclasses.replace(c, versions=[dataclasses.replace(v, at_once=counted)])
    text = section(c2)
    assert "rounds with dstack's pipeline at work during the calls: proxy; one call |" in text
    assert "| 30 + 59; 45 | 1 of 1; 0 of 1 |" in text
    again = Comparison.from_json(json.loads(json.dumps(dataclasses.asdict(c2))))
    assert section(again) == text
    # A run that did not count them keeps the table as it was.
    assert "pipeline at work" not in section(c) and "| 30 + 59; 45 |\n" in section(c)
