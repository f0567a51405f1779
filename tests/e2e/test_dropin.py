"""The proxy is a drop-in: the same requests, sent straight to a real dstack server and through
the proxy, get the same status, content type and body; the dstack CLI works through it."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from harness.api import create_project
from harness.bursts import stop_events
from harness.runs import create_active_runs, stop_runs_until_finished, wait_for_runs
from harness.server import DstackServer
from harness.versions import CURRENT_VERSION, LEGACY_VERSION
from tests.support.cli import cli_add_project, run_cli, write_task_file

PROJECT = "probe"
STOP = f"/api/project/{PROJECT}/runs/stop"
JSON = "application/json"

# (name, method, path, credential, body, extra headers). Credential "admin" is the server's
# admin token; "bad" an unknown one; None sends no Authorization at all.
PROBES: list[tuple[str, str, str, str | None, bytes | None, dict[str, str]]] = [
    ("healthcheck", "GET", "/healthcheck", None, None, {}),
    ("ui index", "GET", "/", None, None, {}),
    ("ui spa fallback", "GET", "/projects/probe/runs", None, None, {}),
    ("read: my user", "POST", "/api/users/get_my_user", "admin", b"{}", {}),
    (
        "read: runs list",
        "POST",
        "/api/runs/list",
        "admin",
        b'{"project_name": "probe", "limit": 10}',
        {},
    ),
    (
        "read: unknown run",
        "POST",
        f"/api/project/{PROJECT}/runs/get",
        "admin",
        b'{"run_name": "no-such-run"}',
        {},
    ),
    ("stop unknown run", "POST", STOP, "admin", b'{"runs_names": ["no-such"], "abort": false}', {}),
    (
        "delete unknown run",
        "POST",
        f"/api/project/{PROJECT}/runs/delete",
        "admin",
        b'{"runs_names": ["no-such"]}',
        {},
    ),
    ("malformed json", "POST", STOP, "admin", b'{"runs_names": [', {}),
    ("malformed json, no token", "POST", STOP, None, b'{"runs_names": [', {}),
    ("wrong list type", "POST", STOP, "admin", b'{"runs_names": "x", "abort": false}', {}),
    ("wrong flag type", "POST", STOP, "admin", b'{"runs_names": ["x"], "abort": "maybe"}', {}),
    ("coerced flag", "POST", STOP, "admin", b'{"runs_names": ["x"], "abort": "yes"}', {}),
    ("extra field", "POST", STOP, "admin", b'{"runs_names": ["x"], "abort": false, "z": 1}', {}),
    ("missing field", "POST", STOP, "admin", b'{"runs_names": ["x"]}', {}),
    ("empty body", "POST", STOP, "admin", b"", {}),
    ("json array body", "POST", STOP, "admin", b"[1, 2]", {}),
    (
        "text/plain body",
        "POST",
        STOP,
        "admin",
        b'{"runs_names": ["x"], "abort": false}',
        {"Content-Type": "text/plain"},
    ),
    ("no token", "POST", STOP, None, b'{"runs_names": ["x"], "abort": false}', {}),
    ("bad token", "POST", STOP, "bad", b'{"runs_names": ["x"], "abort": false}', {}),
    (
        "unknown project",
        "POST",
        "/api/project/no-such-project/runs/stop",
        "admin",
        b'{"runs_names": ["x"], "abort": false}',
        {},
    ),
    (
        "project in other case",
        "POST",
        "/api/project/PROBE/runs/stop",
        "admin",
        b'{"runs_names": ["x"], "abort": false}',
        {},
    ),
    ("query string", "POST", STOP + "?x=1", "admin", b'{"runs_names": ["x"], "abort": false}', {}),
    (
        "invalid api version",
        "POST",
        STOP,
        "admin",
        b'{"runs_names": ["x"], "abort": false}',
        {"X-API-Version": "garbage!"},
    ),
    (
        "newer client",
        "POST",
        STOP,
        "admin",
        b'{"runs_names": ["x"], "abort": false}',
        {"X-API-Version": "0.99.0"},
    ),
    ("unknown api path", "POST", "/api/no/such/path", "admin", b"{}", {}),
    ("trailing slash", "POST", STOP + "/", "admin", b'{"runs_names": ["x"], "abort": false}', {}),
    ("GET on a POST route", "GET", STOP, "admin", None, {}),
    ("server metrics (disabled)", "GET", "/metrics", None, None, {}),
]


@pytest.fixture(scope="module")
def probe_project(dstack_server: DstackServer) -> str:
    create_project(dstack_server, PROJECT)
    return PROJECT


async def _send(
    session: aiohttp.ClientSession,
    base: str,
    method: str,
    path: str,
    token: str | None,
    body: bytes | None,
    extra: dict[str, str],
) -> tuple[int, str | None, bytes]:
    headers = {"Content-Type": JSON} if body is not None else {}
    headers.update(extra)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with session.request(
        method, base + path, data=body, headers=headers, allow_redirects=False
    ) as resp:
        return resp.status, resp.headers.get("Content-Type"), await resp.read()


@pytest.mark.parametrize("probe", PROBES, ids=[p[0] for p in PROBES])
async def test_probe_gets_the_same_answer_direct_and_via_the_proxy(
    dstack_server: DstackServer,
    proxy_url: str,
    probe_project: str,
    probe: tuple[str, str, str, str | None, bytes | None, dict[str, str]],
) -> None:
    _, method, path, credential, body, extra = probe
    token = {"admin": dstack_server.admin_token, "bad": "not-a-token", None: None}[credential]
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        direct = await _send(session, dstack_server.url, method, path, token, body, extra)
        proxied = await _send(session, proxy_url, method, path, token, body, extra)
    assert proxied == direct


async def test_ui_asset_ranges_and_conditional_requests_pass_through(
    dstack_server: DstackServer, proxy_url: str
) -> None:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.get(proxy_url + "/") as resp:
            etag = resp.headers["ETag"]
        for headers, status in (({"Range": "bytes=0-9"}, 206), ({"If-None-Match": etag}, 304)):
            answers = []
            for base in (dstack_server.url, proxy_url):
                async with session.get(base + "/", headers=headers) as resp:
                    answers.append(
                        (resp.status, resp.headers.get("Content-Range"), await resp.read())
                    )
            assert answers[0] == answers[1]
            assert answers[0][0] == status


def test_dstack_cli_works_through_the_proxy(
    dstack_server: DstackServer, proxy_url: str, tmp_path: Path
) -> None:
    # The server's own version of the CLI: an older server refuses a newer client.
    legacy = dstack_server.version == LEGACY_VERSION
    cli = {"executable": dstack_server.executable}
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    cli_add_project(home, "main", proxy_url, dstack_server.admin_token, **cli)
    task = write_task_file(work, "cli-via-proxy", user="root" if legacy else None)
    # 0.18.40 wants a repo for every run unless told otherwise.
    no_repo = ["--no-repo"] if legacy else []
    applied = run_cli(["apply", "-f", str(task), "-y", "-d", *no_repo], home=home, cwd=work, **cli)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    wait_for_runs(dstack_server, "main", ["cli-via-proxy"], finished=False)
    listed = run_cli(["ps"], home=home, cwd=work, **cli)
    assert listed.returncode == 0 and "cli-via-proxy" in listed.stdout
    stopped = run_cli(["stop", "-y", "cli-via-proxy"], home=home, cwd=work, **cli)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    # A stopped run can bounce back to pending (docs/dstack-api.md, "The stop race").
    final = stop_runs_until_finished(dstack_server, "main", ["cli-via-proxy"])
    assert final["cli-via-proxy"] in {"terminated", "failed", "done"}
    assert stop_events(dstack_server, "main", ["cli-via-proxy"])["cli-via-proxy"]


async def test_websocket_handshakes_are_refused_alike(
    dstack_server: DstackServer, proxy_url: str
) -> None:
    # dstack 0.22.5 refuses every WebSocket handshake with 403 (docs/dstack-api.md, "Traffic
    # that only passes through"), 0.18.40 with 404 (docs/dstack-api.md, "Differences in 0.18.40").
    handshake = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    answers = []
    async with aiohttp.ClientSession() as session:
        for base in (dstack_server.url, proxy_url):
            async with session.get(base + "/api/project/main/runs/list", headers=handshake) as r:
                answers.append((r.status, r.headers.get("Content-Type"), await r.read()))
    assert answers[0][0] == (404 if dstack_server.version == LEGACY_VERSION else 403)
    assert answers[1] == answers[0]


@pytest.mark.server_versions(CURRENT_VERSION)  # 0.18.40's own client: the CLI test above
def test_dstack_sdk_works_through_the_proxy(dstack_server: DstackServer, proxy_url: str) -> None:
    from dstack.api import Client  # imported here: the SDK takes a second to import

    created = create_active_runs(dstack_server, "main", ["sdk-via-proxy"], url=proxy_url)
    assert created["sdk-via-proxy"] not in {"terminated", "failed", "done"}
    client = Client.from_config(
        project_name="main", server_url=proxy_url, user_token=dstack_server.admin_token
    )
    assert "sdk-via-proxy" in [run.name for run in client.runs.list()]
    run = client.runs.get("sdk-via-proxy")
    assert run is not None
    run.stop()  # a one-run runs/stop: the proxy merges it, alone, into one call
    final = stop_runs_until_finished(dstack_server, "main", ["sdk-via-proxy"])
    assert final["sdk-via-proxy"] in {"terminated", "failed", "done"}
    assert stop_events(dstack_server, "main", ["sdk-via-proxy"])["sdk-via-proxy"]
