"""Smoke test of the e2e harness against a real dstack server (~40 s alone).

Uses the session-scoped ``dstack_server`` fixture of ``tests/e2e/conftest.py`` (a
:class:`DstackServer`), and a project of its own so other e2e tests do not see its runs.

Run: ``python -m pytest tests/e2e/test_harness_smoke.py -q -p no:cacheprovider``
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import dstack_harness as h

pytestmark = pytest.mark.e2e

PROJECT = "harness-smoke"


@pytest.fixture(scope="module", autouse=True)
def smoke_project(dstack_server: h.DstackServer) -> Iterator[str]:
    """A project owned by admin for this module; its runs are stopped afterwards."""
    h.create_project(dstack_server, PROJECT)
    yield PROJECT
    active = [n for n, s in h.run_states(dstack_server, PROJECT).items() if s in h.ACTIVE_STATUSES]
    h.stop_runs_until_finished(dstack_server, PROJECT, active)


def test_default_project_exists(dstack_server: h.DstackServer) -> None:
    project = h.api_post(dstack_server, f"/api/projects/{h.DEFAULT_PROJECT}/get")
    members = {m["user"]["username"]: m["project_role"] for m in project["members"]}
    assert members["admin"] == "admin"  # other e2e tests may add members to the shared server


def test_parse_processed_request_line() -> None:
    line = (
        "DEBUG 2026-11-29T05:47:38.433 dstack._internal.server.app Processed request POST "
        "http://127.0.0.1:38111/api/project/main/runs/stop?q=1 in 0.036001s. Status: 200\n"
        "INFO 2026-11-29T05:47:38.500 dstack._internal.server.services.events Emitting event\n"
    )
    (req,) = h.parse_processed_requests(line)
    assert (req.method, req.path, req.query, req.status) == (
        "POST",
        "/api/project/main/runs/stop",
        "q=1",
        200,
    )


def test_created_run_is_active(dstack_server: h.DstackServer) -> None:
    created = h.create_active_runs(dstack_server, PROJECT, ["smoke-active"])
    assert created == {"smoke-active": "submitted"}
    states = h.wait_for_runs(dstack_server, PROJECT, ["smoke-active"], finished=False)
    assert states["smoke-active"] in h.ACTIVE_STATUSES
    assert h.run_states(dstack_server, PROJECT)["smoke-active"] in h.ACTIVE_STATUSES


def test_counting_stop_and_delete_requests(dstack_server: h.DstackServer) -> None:
    h.create_active_runs(dstack_server, PROJECT, ["smoke-count"])

    mark = dstack_server.log_mark()
    h.stop_runs(dstack_server, PROJECT, ["smoke-count"])
    h.stop_runs(dstack_server, PROJECT, ["no-such-run"])
    # The log line is written before the response is sent: no wait needed.
    assert dstack_server.count_requests("/runs/stop", since=mark) == 2
    assert dstack_server.count_requests("/runs/stop", since=mark, status=200) == 2
    assert dstack_server.count_requests("/runs/delete", since=mark) == 0
    assert dstack_server.count_requests("/runs/stop", since=mark, method="GET") == 0
    assert dstack_server.wait_for_count("/runs/stop", since=mark, at_least=2) == 2

    # Re-stops if the upstream race put the run back to pending.
    h.stop_runs_until_finished(dstack_server, PROJECT, ["smoke-count"])
    assert h.wait_for_runs(dstack_server, PROJECT, ["smoke-count"], finished=True) == {
        "smoke-count": "terminated"
    }
    info = h.run_infos(dstack_server, PROJECT)["smoke-count"]
    assert info.termination_reason == "stopped_by_user"

    mark = dstack_server.log_mark()
    h.delete_runs(dstack_server, PROJECT, ["smoke-count"])
    assert dstack_server.count_requests("/runs/delete", since=mark) == 1
    assert "smoke-count" not in h.run_states(dstack_server, PROJECT)
    assert h.run_states(dstack_server, PROJECT, include_deleted=True)["smoke-count"] == "deleted"
