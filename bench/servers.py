"""The dstack servers `make bench` and `make demo` measure, in order: 0.18.40 first (the server
whose web UI sends one stop per selected run), then the pinned 0.22.5, both with SQLite.

Other databases: `python -m bench --databases sqlite postgres` measures every version on each.
A database other than SQLite is started by `DstackServer(database=...)` once tests/support/server.py
has that parameter (the Postgres launcher); until then it is named and skipped. `LAUNCHERS` can
also map a database name to a launcher of its own.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.server import DstackServer
from tests.support.versions import CURRENT_VERSION, LEGACY_VERSION, legacy_dstack

Launcher = Callable[[Path | None], AbstractContextManager[DstackServer]]


def _sqlite(executable: Path | None) -> AbstractContextManager[DstackServer]:
    return DstackServer(executable=executable)


LAUNCHERS: dict[str, Launcher] = {"sqlite": _sqlite}


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


def _server_takes_database() -> bool:
    return "database" in inspect.signature(DstackServer).parameters


def launcher(database: str) -> Launcher | None:
    if database in LAUNCHERS:
        return LAUNCHERS[database]
    if _server_takes_database():

        def start(executable: Path | None) -> AbstractContextManager[DstackServer]:
            kwargs: dict[str, Any] = {"database": database}  # the Postgres launcher's parameter
            return DstackServer(executable=executable, **kwargs)

        return start
    return None


def available(databases: tuple[str, ...]) -> tuple[str, ...]:
    """The databases a launcher exists for; the others are named and skipped."""
    for db in databases:
        if launcher(db) is None:
            print(f"no launcher for database {db!r} yet: skipped", flush=True)
    return tuple(db for db in databases if launcher(db) is not None)


@contextlib.contextmanager
def running(spec: ServerSpec) -> Iterator[DstackServer]:
    """A started server of `spec`'s version and database (0.18.40 from .venv-legacy, built on
    first use); its version is checked against the one asked for."""
    executable = legacy_dstack() if spec.version == LEGACY_VERSION else None
    start = launcher(spec.database)
    if start is None:
        raise RuntimeError(f"no launcher for database {spec.database!r}")
    with start(executable) as server:
        if server.version != spec.version:
            raise RuntimeError(f"asked for dstack {spec.version}, got {server.version}")
        yield server
