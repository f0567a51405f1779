"""The web UI that dstack 0.18.40 serves itself, in a real browser (Debian's headless Chromium,
driven by Playwright; tests/support/browser.py), against a real 0.18.40 server: log in with the
admin token, open the runs list, tick 20 runs, click Stop, then Delete, as a person does.

Three ways to the server, each with its own project and runs:
- `direct`: the browser straight to dstack; the UI's own behaviour, one call per run;
- `proxy`: straight to the proxy with its default configuration, over HTTP/1.1, so Chromium
  spreads the 20 requests over its 6 connections to the host: at most 5 calls to dstack;
- `front`: through the shipped nginx front (deploy/nginx/, TLS with a self-signed certificate),
  over HTTP/2, all 20 on one connection, to proxy replicas: at most 2 calls to dstack.

Calls are counted from the server's DEBUG log. What the UI shows is checked: no error flash
ever, every call answered 200, the runs `Terminated` after Stop and gone after Delete. Each step
is screenshotted into `test-artifacts/legacy-ui/<way>/` at the repository root (ignored by git),
with `timings.json`: from each click to the last answer, and to the table showing the final
state (the UI does not refresh by itself: the test clicks the refresh button, as a person would).
The figures are in docs/measurements.md; they are measured here, never asserted.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from playwright.sync_api import Playwright, sync_playwright

from harness.api import create_project
from harness.processes import ProxyProcess
from harness.runs import (
    FINISHED_STATUSES,
    create_active_runs,
    run_states,
    stop_runs_until_finished,
)
from harness.server import DstackServer
from harness.versions import LEGACY_VERSION
from tests.support.browser import LegacyRunsUI, chromium_executable, open_page
from tests.support.front import REPLICA_POLICY, NginxFront, make_certificate

pytestmark = pytest.mark.server_versions(LEGACY_VERSION)

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "legacy-ui"
RUNS = 20  # one page of the UI's runs list
# Upstream calls per action: the UI's own one per run straight to dstack; issue 18's bounds
# through the proxy: at most 5 over HTTP/1.1 (the first wave, over Chromium's six fresh
# connections, one call beside its leader; then one a round), at most 2 behind the HTTP/2 front.
BOUNDS = {"direct": (RUNS, RUNS), "proxy": (1, 5), "front": (1, 2)}
# The UI asks for two things 0.18.40 does not have; dstack itself answers 405 (Method Not
# Allowed), and the UI goes on. Any other failed API call is a failure of the test.
DSTACK_OWN_405 = {(405, "/api/auth/okta/info"), (405, "/api/user/admin/billing/info")}
PROTOCOL = {"direct": "http/1.1", "proxy": "http/1.1", "front": "h2"}


@dataclass
class Front:
    url: str
    nginx: NginxFront


@pytest.fixture(scope="module")
def chromium() -> str:
    return chromium_executable()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def front(
    dstack_server: DstackServer, tmp_path_factory: pytest.TempPathFactory, nginx_image: str
) -> Iterator[Front]:
    """The shipped front (deploy/nginx/) with TLS, before two proxy replicas configured as
    deploy/kubernetes runs them."""
    workdir = tmp_path_factory.mktemp("ui-front")
    cert = make_certificate(workdir)
    args = ("--trusted-proxies", "127.0.0.1", "--policy", REPLICA_POLICY, "--log-level", "info")
    with (
        ProxyProcess(dstack_server.url, workdir / "replica-1.log", *args) as one,
        ProxyProcess(dstack_server.url, workdir / "replica-2.log", *args) as two,
        NginxFront(
            workdir / "nginx",
            [one.url.split("//", 1)[1], two.url.split("//", 1)[1]],
            dstack_server.url.split("//", 1)[1],
            cert,
            nginx_image,
        ) as nginx,
    ):
        yield Front(nginx.url, nginx)


def _calls(server: DstackServer, mark: int, path: str) -> str:
    """dstack's own log lines of the calls to `path` since `mark` (when each ended, how long)."""
    return "".join(
        line + "\n"
        for line in server.read_log(mark).splitlines()
        if " Processed request POST " in line and f"{path} in " in line
    )


def _batches(log: Path, since: int, project: str) -> str:
    """The proxy's own account of the batches it sent for `project` since byte `since` of its
    log: each one's size, why it left and how long it waited; read when a count is over its
    bound, to tell a split first wave from a follow-up that left without its siblings."""
    with log.open("rb") as f:
        f.seek(since)
        lines = [orjson.loads(line) for line in f if b'"batch_flushed"' in line]
    return "".join(
        f"\n  {b['endpoint']}: {b['size']} members, {b['reason']}, waited {b['wait_max_ms']} ms, "
        f"upstream {b['upstream_ms']} ms"
        for b in lines
        if b.get("project") == project
    )


@pytest.mark.parametrize("way", ["direct", "proxy", "front"])
def test_legacy_ui_stops_and_deletes_20_runs(
    way: str,
    dstack_server: DstackServer,
    proxy_url: str,
    proxy_log: Path,
    chromium: str,
    playwright: Playwright,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    server = dstack_server
    fronted: Front | None = request.getfixturevalue("front") if way == "front" else None
    base = {"direct": server.url, "proxy": proxy_url}.get(way) or (fronted and fronted.url)
    assert base
    artifacts = ARTIFACTS / way
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True)
    project = f"ui-{way}"
    names = [f"{way}-{i:02d}" for i in range(RUNS)]
    create_project(server, project)
    create_active_runs(server, project, names)
    low, high = BOUNDS[way]
    log_start = proxy_log.stat().st_size
    try:
        with open_page(
            playwright, chromium, tmp_path / "profile", ignore_certificate_errors=way == "front"
        ) as page:
            ui = LegacyRunsUI(page, base, artifacts)
            ui.log_in(server.admin_token)
            ui.open_runs(project, names)
            ui.select(names)
            ui.screenshot("selected-for-stop")

            mark = server.log_mark()
            front_mark = fronted.nginx.log_mark() if fronted else 0
            stop = ui.click("Stop", "runs/stop", RUNS)
            ui.screenshot("stop-answered")
            stopped = ui.refresh_until(
                stop,
                lambda rows: all(rows.get(n) == "Terminated" for n in names),
                "every run to show Terminated",
            )
            ui.screenshot("stopped")
            stop_calls = server.count_requests(f"/api/project/{project}/runs/stop", since=mark)
            calls_log = _calls(server, mark, "/runs/stop")

            ui.select(names)
            ui.screenshot("selected-for-delete")
            mark = server.log_mark()
            delete = ui.click("Delete", "runs/delete", RUNS)
            ui.screenshot("delete-answered")
            left = ui.refresh_until(
                delete, lambda rows: not set(names) & set(rows), "every run to be gone"
            )
            ui.screenshot("deleted")
            delete_calls = server.count_requests(f"/api/project/{project}/runs/delete", since=mark)
            calls_log += _calls(server, mark, "/runs/delete")
            errors, page_errors, failures = ui.shown_errors(), ui.page_errors, ui.api_failures
            answers = [[(r.status, r.body()) for _, r in a.responses] for a in (stop, delete)]
            protocols = {
                "runs/stop": ui.protocols("/runs/stop"),
                "runs/delete": ui.protocols("/runs/delete"),
            }
        fronted_lines = fronted.nginx.logged(front_mark) if fronted else []
    finally:
        states = run_states(server, project)
        left_over = [n for n, s in states.items() if s not in FINISHED_STATUSES]
        if left_over:
            stop_runs_until_finished(server, project, left_over)

    timings = {
        "way": way,
        "runs": RUNS,
        "stop": {"calls": stop_calls, "answered_s": stop.answered, "shown_s": stop.shown},
        "delete": {"calls": delete_calls, "answered_s": delete.answered, "shown_s": delete.shown},
        "screenshots": [str(p.relative_to(ROOT)) for p in ui.shots],
    }
    (artifacts / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    (artifacts / "dstack-calls.log").write_text(calls_log)
    print(f"legacy UI, {way}: {json.dumps(timings)}")

    # The UI sent one request per run, each answered 200 with dstack's empty answer.
    def sent(bodies: list[str]) -> list[dict[str, object]]:
        return sorted((orjson.loads(b) for b in bodies), key=lambda b: str(b["runs_names"]))

    assert sent(stop.bodies) == [{"runs_names": [n], "abort": False} for n in names]
    assert sent(delete.bodies) == [{"runs_names": [n]} for n in names]
    assert answers == [[(200, b"null")] * RUNS] * 2
    assert protocols == {"runs/stop": [PROTOCOL[way]] * RUNS, "runs/delete": [PROTOCOL[way]] * RUNS}
    # What the UI showed: no error flash, no script error, no failed call but dstack's own 405s,
    # and the final states.
    assert errors == []
    assert page_errors == []
    assert set(failures) <= DSTACK_OWN_405, failures
    assert all(stopped[n] == "Terminated" for n in names), stopped
    assert not set(names) & set(left), left
    assert run_states(server, project, include_deleted=True, created=names) == dict.fromkeys(
        names, "deleted"
    )
    # What dstack saw.
    batches = _batches(proxy_log, log_start, project) if way == "proxy" else ""
    assert low <= stop_calls <= high, f"{way}: {stop_calls} runs/stop calls, {RUNS} runs{batches}"
    assert low <= delete_calls <= high, f"{way}: {delete_calls} runs/delete calls{batches}"
    if fronted:
        actions = [x for x in fronted_lines if x.uri.endswith(("/runs/stop", "/runs/delete"))]
        assert len(actions) == 2 * RUNS
        assert {x.protocol for x in actions} == {"HTTP/2.0"}
        assert len({x.connection for x in actions}) == 1  # one browser connection for all


def test_the_checks_see_the_ui_s_error_flash(
    dstack_server: DstackServer, chromium: str, playwright: Playwright, tmp_path: Path
) -> None:
    """The error checks above can fail: a stop that fails (here the browser itself answers it
    with dstack's 400 shape, as dstack never fails a stop of a pending run) shows the UI's red
    flash, and the watch and the failed-call record both see it."""
    server, project, names = dstack_server, "ui-error-flash", ["flash-0"]
    create_project(server, project)
    create_active_runs(server, project, names)
    artifacts = ARTIFACTS / "error-flash"
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True)
    refused = orjson.dumps({"detail": [{"msg": "refused for the test", "code": "error"}]})
    try:
        with open_page(playwright, chromium, tmp_path / "profile") as page:
            page.route(
                "**/runs/stop",
                lambda route: route.fulfill(
                    status=400, body=refused, content_type="application/json"
                ),
            )
            ui = LegacyRunsUI(page, server.url, artifacts)
            ui.log_in(server.admin_token)
            ui.open_runs(project, names)
            ui.select(names)
            stop = ui.click("Stop", "runs/stop", 1)
            page.wait_for_selector('[class*="awsui_flash-type-error"]')
            ui.screenshot("error-flash")
            errors, failures = ui.shown_errors(), ui.api_failures
    finally:
        stop_runs_until_finished(server, project, names)
    assert stop.statuses == [400]
    assert len(errors) == 1 and errors[0].startswith("Server error"), errors
    assert (400, f"/api/project/{project}/runs/stop") in failures
