"""Coalescing against a REAL dstack server. Upstream calls are counted from the server's own
log (`Processed request POST …/runs/stop`), and who stopped which run from its events API."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator

import pytest

from harness.api import add_member, create_user
from harness.bursts import burst, put_back, records_events, stop_events
from harness.runs import create_active_runs, run_states, stop_runs_until_finished
from harness.server import DstackServer
from harness.versions import LEGACY_VERSION

PROJECT = "main"
STOP = f"/api/project/{PROJECT}/runs/stop"
DELETE = f"/api/project/{PROJECT}/runs/delete"
FINISHED = {"terminated", "failed", "done"}


@pytest.fixture
def cleanup(dstack_server: DstackServer) -> Iterator[list[str]]:
    """Runs to leave finished after the test: pending runs keep the server's pipeline busy."""
    names: list[str] = []
    yield names
    stop_runs_until_finished(dstack_server, PROJECT, names)


@pytest.mark.databases("sqlite", "postgres")
async def test_concurrent_one_run_stops_then_deletes_reach_the_server_as_one_call_each(
    dstack_server: DstackServer, proxy_url: str, cleanup: list[str]
) -> None:
    # 0.18.40's runs take seconds to stop: 20 there keep CI in its budget, still ten times the
    # two calls allowed.
    count = 20 if dstack_server.version == LEGACY_VERSION else 40
    names = [f"burst-{i}" for i in range(count)]
    cleanup += names
    create_active_runs(dstack_server, PROJECT, names)
    token = dstack_server.admin_token

    mark = dstack_server.log_mark()
    answers = await burst(
        proxy_url, STOP, [{"runs_names": [n], "abort": False} for n in names], token
    )
    states = run_states(dstack_server, PROJECT)  # right after the answers: see the stop race
    assert answers == [(200, b"null")] * count
    # The first alone, the rest in one batch beside it; a busy machine can pause a burst for
    # longer than the quiet gap and split it once more. Singly, it would be `count` calls.
    assert dstack_server.count_requests("/runs/stop", since=mark) <= 3
    stopped = stop_events(dstack_server, PROJECT, names)
    admin = "admin" if records_events(dstack_server) else None  # 0.18.40 records no actor
    assert {n: [actor for _, actor in stopped[n]] for n in names} == {n: [admin] for n in names}
    still_active = {n for n in names if states[n] != "terminating" and states[n] not in FINISHED}
    assert still_active <= put_back(dstack_server, PROJECT, sorted(still_active)), states

    stop_runs_until_finished(dstack_server, PROJECT, names)  # deletable only once finished
    mark = dstack_server.log_mark()
    answers = await burst(proxy_url, DELETE, [{"runs_names": [n]} for n in names], token)
    assert answers == [(200, b"null")] * count
    assert dstack_server.count_requests("/runs/delete", since=mark) <= 3  # as for the stops
    after = run_states(dstack_server, PROJECT, include_deleted=True, created=names)
    assert {after[n] for n in names} == {"deleted"}


@pytest.mark.databases("sqlite", "postgres")
async def test_one_active_run_fails_only_its_own_delete_with_dstacks_own_answer(
    dstack_server: DstackServer, proxy_url: str, cleanup: list[str]
) -> None:
    names = [f"mixed-{i}" for i in range(12)]
    active = "mixed-7"
    cleanup += names
    create_active_runs(dstack_server, PROJECT, names)
    stop_runs_until_finished(dstack_server, PROJECT, [n for n in names if n != active])
    token = dstack_server.admin_token

    mark = dstack_server.log_mark()
    deletes = [{"runs_names": [n]} for n in names]
    answers = dict(zip(names, await burst(proxy_url, DELETE, deletes, token), strict=True))
    calls = dstack_server.count_requests("/runs/delete", since=mark)
    alone = (await burst(dstack_server.url, DELETE, [{"runs_names": [active]}], token))[0]

    assert alone[0] == 400
    assert json.loads(alone[1])["detail"][0]["msg"] == f"Cannot delete active runs: ['{active}']"
    assert answers.pop(active) == alone
    assert set(answers.values()) == {(200, b"null")}
    # One bad caller costs 2 + 2·ceil(log2 12) calls (the batch call, the probe naming nothing,
    # two calls per level); plus the first request alone, and one more batch if a busy machine
    # paused the burst for longer than the quiet gap.
    assert calls <= 2 + 2 * math.ceil(math.log2(len(names))) + 2
    after = run_states(dstack_server, PROJECT, include_deleted=True, created=names)
    assert {n: after[n] for n in answers} == dict.fromkeys(answers, "deleted")
    assert after[active] not in FINISHED | {"deleted"}


async def test_member_and_non_member_stopping_at_once_never_share_a_call(
    dstack_server: DstackServer, proxy_url: str, cleanup: list[str]
) -> None:
    member = create_user(dstack_server, "team-member")
    add_member(dstack_server, PROJECT, "team-member", "user")
    outsider = create_user(dstack_server, "outsider")
    mine, theirs = [f"own-{i}" for i in range(5)], [f"target-{i}" for i in range(5)]
    cleanup += mine + theirs
    create_active_runs(dstack_server, PROJECT, mine + theirs)

    mark = dstack_server.log_mark()
    member_answers, outsider_answers = await asyncio.gather(
        burst(proxy_url, STOP, [{"runs_names": [n], "abort": False} for n in mine], member),
        burst(proxy_url, STOP, [{"runs_names": [n], "abort": False} for n in theirs], outsider),
    )
    states = run_states(dstack_server, PROJECT)
    direct = (
        await burst(
            dstack_server.url, STOP, [{"runs_names": [theirs[0]], "abort": False}], outsider
        )
    )[0]

    assert member_answers == [(200, b"null")] * 5
    assert direct[0] == 403
    assert outsider_answers == [direct] * 5
    assert all(states[n] not in FINISHED | {"terminating"} for n in theirs), states
    events = stop_events(dstack_server, PROJECT, mine + theirs)
    member_name = "team-member" if records_events(dstack_server) else None  # none on 0.18.40
    assert {n: [a for _, a in events[n]] for n in mine} == {n: [member_name] for n in mine}
    assert {n: events[n] for n in theirs} == {n: [] for n in theirs}
    # Merged per credential, never across: the first alone and the rest in a batch or two
    # each (a busy machine can pause a burst for longer than the quiet gap), plus the direct
    # probe; ten requests singly would be ten calls.
    assert dstack_server.count_requests("/runs/stop", since=mark) <= 3 + 3 + 1
