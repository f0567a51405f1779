"""Smoke test of the test support package against a real dstack server: the session's
`dstack_server` fixture, with a project of its own so other e2e tests do not see its runs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.api import api_post, create_project
from harness.runs import (
    ACTIVE_STATUSES,
    DEFAULT_PROJECT,
    create_active_runs,
    delete_runs,
    run_infos,
    run_states,
    stop_runs,
    stop_runs_until_finished,
    wait_for_runs,
)
from harness.server import DstackServer, parse_processed_requests

pytestmark = pytest.mark.e2e

PROJECT = "harness-smoke"


@pytest.fixture(scope="module", autouse=True)
def smoke_project(dstack_server: DstackServer) -> Iterator[str]:
    """A project owned by admin for this module; its runs are stopped afterwards."""
    create_project(dstack_server, PROJECT)
    yield PROJECT
    active = [n for n, s in run_states(dstack_server, PROJECT).items() if s in ACTIVE_STATUSES]
    stop_runs_until_finished(dstack_server, PROJECT, active)


def test_default_project_exists(dstack_server: DstackServer) -> None:
    project = api_post(dstack_server, f"/api/projects/{DEFAULT_PROJECT}/get")
    members = {m["user"]["username"]: m["project_role"] for m in project["members"]}
    assert members["admin"] == "admin"  # other e2e tests may add members to the shared server


def test_parse_processed_request_line() -> None:
    line = (
        "DEBUG 2026-11-29T05:47:38.433 dstack._internal.server.app Processed request POST "
        "http://127.0.0.1:38111/api/project/main/runs/stop?q=1 in 0.036001s. Status: 200\n"
        "INFO 2026-11-29T05:47:38.500 dstack._internal.server.services.events Emitting event\n"
    )
    (req,) = parse_processed_requests(line)
    assert (req.method, req.path, req.query, req.status) == (
        "POST",
        "/api/project/main/runs/stop",
        "q=1",
        200,
    )


def test_created_run_is_active(dstack_server: DstackServer) -> None:
    created = create_active_runs(dstack_server, PROJECT, ["smoke-active"])
    assert created == {"smoke-active": "submitted"}
    states = wait_for_runs(dstack_server, PROJECT, ["smoke-active"], finished=False)
    assert states["smoke-active"] in ACTIVE_STATUSES
    assert run_states(dstack_server, PROJECT)["smoke-active"] in ACTIVE_STATUSES


def test_counting_stop_and_delete_requests(dstack_server: DstackServer) -> None:
    create_active_runs(dstack_server, PROJECT, ["smoke-count"])

    mark = dstack_server.log_mark()
    stop_runs(dstack_server, PROJECT, ["smoke-count"])
    stop_runs(dstack_server, PROJECT, ["no-such-run"])
    # The log line is written before the response is sent: no wait needed.
    assert dstack_server.count_requests("/runs/stop", since=mark) == 2
    assert dstack_server.count_requests("/runs/stop", since=mark, status=200) == 2
    assert dstack_server.count_requests("/runs/delete", since=mark) == 0
    assert dstack_server.count_requests("/runs/stop", since=mark, method="GET") == 0
    assert dstack_server.wait_for_count("/runs/stop", since=mark, at_least=2) == 2

    # Re-stops if the upstream race put the run back to pending.
    stop_runs_until_finished(dstack_server, PROJECT, ["smoke-count"])
    assert wait_for_runs(dstack_server, PROJECT, ["smoke-count"], finished=True) == {
        "smoke-count": "terminated"
    }
    info = run_infos(dstack_server, PROJECT)["smoke-count"]
    assert info.termination_reason == "stopped_by_user"

    mark = dstack_server.log_mark()
    delete_runs(dstack_server, PROJECT, ["smoke-count"])
    assert dstack_server.count_requests("/runs/delete", since=mark) == 1
    assert "smoke-count" not in run_states(dstack_server, PROJECT)
    # 0.18.40 drops deleted runs from runs/list; `created` names them "deleted" then.
    deleted = run_states(dstack_server, PROJECT, include_deleted=True, created=["smoke-count"])
    assert deleted["smoke-count"] == "deleted"
