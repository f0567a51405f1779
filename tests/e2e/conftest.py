"""A REAL dstack server on a free loopback port with a temporary HOME and SQLite, and the proxy in
front of it as its own process (`python -m proxy`), both for the whole session. Upstream calls
are counted from the server's own log.

Every test runs against each server version in `SERVER_VERSIONS`: the pinned `dstack[server]`
of the dev extra, and 0.18.40 (the server behind the legacy web UI) from its own virtual
environment (tests/support/legacy.py). A test that only one version can run says so with
`@pytest.mark.server_versions(...)`; `COALESCER_SERVER_VERSIONS=0.22.5` runs one version only.

Both servers start with a `server/config.yml` that keeps SSH fleets to admins
(`default_permissions.allow_non_admins_manage_ssh_fleets: false`), so that a project member's
delete of an SSH fleet gets dstack's own bare 403 (tests/e2e/test_refusals_real.py). Nothing
else in the suite manages SSH fleets.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import ProxyProcess
from tests.support.server import DstackServer
from tests.support.versions import CURRENT_VERSION, LEGACY_VERSION, legacy_dstack

SERVER_VERSIONS = tuple(
    v
    for v in os.environ.get(
        "COALESCER_SERVER_VERSIONS", f"{CURRENT_VERSION},{LEGACY_VERSION}"
    ).split(",")
    if v
)


SERVER_CONFIG = """\
projects:
- name: main
default_permissions:
  allow_non_admins_manage_ssh_fleets: false
"""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the version variants a test is not meant for (`server_versions` marker)."""
    kept, dropped = [], []
    for item in items:
        marker = item.get_closest_marker("server_versions")
        callspec = getattr(item, "callspec", None)
        version = callspec.params.get("dstack_server") if callspec else None
        if marker is not None and version is not None and version not in marker.args:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session", params=SERVER_VERSIONS)
def dstack_server(request: pytest.FixtureRequest) -> Iterator[DstackServer]:
    executable = legacy_dstack() if request.param == LEGACY_VERSION else None
    with DstackServer(executable=executable, server_config=SERVER_CONFIG) as server:
        assert server.version == request.param
        yield server


@pytest.fixture(scope="session")
def proxy_process(
    dstack_server: DstackServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    log = tmp_path_factory.mktemp("proxy") / "proxy.log"
    with ProxyProcess(dstack_server.url, log, "--log-level", "debug") as proxy:
        yield proxy
    print(f"proxy log: {log}")


@pytest.fixture(scope="session")
def proxy_url(proxy_process: ProxyProcess) -> str:
    return proxy_process.url


@pytest.fixture
def proxy_log(proxy_process: ProxyProcess) -> Path:
    return proxy_process.log
