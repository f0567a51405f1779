"""The dstack servers `make bench` and `make demo` measure, in order: 0.18.40 first (the server
whose web UI sends one stop per selected run), then the pinned 0.22.5, both with SQLite.

Other databases: `python -m bench --databases sqlite postgres` measures every version on each
(`DstackServer(database=...)`: Postgres in a throw-away cluster).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from harness.server import DstackServer
from harness.versions import CURRENT_VERSION, LEGACY_VERSION, legacy_dstack


@dataclass(frozen=True)
class ServerSpec:
    version: str
    database: str = "sqlite"

    @property
    def label(self) -> str:
        return self.version if self.database == "sqlite" else f"{self.version} ({self.database})"


def specs(databases: tuple[str, ...] = ("sqlite",)) -> list[ServerSpec]:
    """Every version on every database asked for, the legacy version first."""
    return [ServerSpec(v, db) for db in databases for v in (LEGACY_VERSION, CURRENT_VERSION)]


@contextlib.contextmanager
def running(spec: ServerSpec) -> Iterator[DstackServer]:
    """A started server of `spec`'s version and database (0.18.40 from .venv-legacy, built on
    first use); its version is checked against the one asked for."""
    executable = legacy_dstack() if spec.version == LEGACY_VERSION else None
    with DstackServer(executable=executable, database=spec.database) as server:
        if server.version != spec.version:
            raise RuntimeError(f"asked for dstack {spec.version}, got {server.version}")
        yield server
