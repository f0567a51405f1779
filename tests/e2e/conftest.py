"""A REAL dstack server on a free loopback port with a temporary HOME and SQLite, and the proxy in
front of it as its own process (`python -m proxy`), both for the whole session. Upstream calls
are counted from the server's own log.

Every test runs against each server version in `SERVER_VERSIONS`: the pinned `dstack[server]`
of the dev extra, and 0.18.40 (the server behind the legacy web UI) from its own virtual
environment (harness/versions.py). A test that only one version can run says so with
`@pytest.mark.server_versions(...)`; `COALESCER_SERVER_VERSIONS=0.22.5` runs one version only.

Both servers start with a `server/config.yml` that keeps SSH fleets to admins
(`default_permissions.allow_non_admins_manage_ssh_fleets: false`), so that a project member's
delete of an SSH fleet gets dstack's own bare 403 (tests/e2e/test_refusals_real.py). Nothing
else in the suite manages SSH fleets.

Production dstack servers run on Postgres (`DSTACK_DATABASE_URL`): a test marked
`@pytest.mark.databases("sqlite", "postgres")` also runs against a Postgres-backed server of each
version (its id ends in `-postgres`), with a throw-away cluster that the tests start
(harness/postgres.py). Unmarked tests run on SQLite only; `COALESCER_DATABASES=postgres`
runs the Postgres variants only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.processes import ProxyProcess
from harness.server import DATABASES, DstackServer
from harness.versions import CURRENT_VERSION, LEGACY_VERSION, legacy_dstack

SERVER_VERSIONS = tuple(
    v
    for v in os.environ.get(
        "COALESCER_SERVER_VERSIONS", f"{CURRENT_VERSION},{LEGACY_VERSION}"
    ).split(",")
    if v
)
DATABASES_RUN = tuple(
    d for d in os.environ.get("COALESCER_DATABASES", ",".join(DATABASES)).split(",") if d
)


@dataclass(frozen=True)
class ServerVariant:
    version: str
    database: str

    @property
    def id(self) -> str:
        return self.version if self.database == "sqlite" else f"{self.version}-{self.database}"


VARIANTS = tuple(ServerVariant(v, d) for d in DATABASES_RUN for v in SERVER_VERSIONS)


def _wanted(item: pytest.Item, variant: ServerVariant) -> bool:
    versions = item.get_closest_marker("server_versions")
    databases = item.get_closest_marker("databases")
    return (versions is None or variant.version in versions.args) and variant.database in (
        databases.args if databases is not None else ("sqlite",)
    )


SERVER_CONFIG = """\
projects:
- name: main
default_permissions:
  allow_non_admins_manage_ssh_fleets: false
"""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the server variants a test is not meant for (`server_versions` and `databases`
    markers)."""
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        variant = callspec.params.get("dstack_server") if callspec else None
        if isinstance(variant, ServerVariant) and not _wanted(item, variant):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session", params=VARIANTS, ids=lambda v: v.id)
def dstack_server(request: pytest.FixtureRequest) -> Iterator[DstackServer]:
    variant: ServerVariant = request.param
    executable = legacy_dstack() if variant.version == LEGACY_VERSION else None
    with DstackServer(
        executable=executable, server_config=SERVER_CONFIG, database=variant.database
    ) as server:
        assert server.version == variant.version
        if variant.database == "postgres":  # dstack really keeps its data there
            assert server.postgres is not None and server.database_url is not None
            database = server.database_url.rpartition("/")[2]
            assert server.postgres.psql(database, "SELECT name FROM projects").split() == ["main"]
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
