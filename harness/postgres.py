"""A throw-away PostgreSQL cluster on a free loopback port, for a Postgres-backed dstack server
(`DstackServer(database="postgres")`, or several servers sharing one cluster).

Debian's `postgresql` package provides the binaries; `setup_postgres.sh` installs it when
missing (as root, as CI runs) and says where they are. The cluster lives in a fresh temporary
directory: `initdb` with trust authentication for the one role `dstack`, then `postgres`
listening on 127.0.0.1 only (no Unix socket), as the `postgres` system user when we are root
(Postgres refuses to run as root). Nothing here is durable: fsync is off, since a test cluster
never outlives its tests and dstack's behaviour does not depend on it.

Each dstack server gets a database of its own (`create_database`), so servers sharing a
cluster never see each other's data. The URL dstack takes is `url(database)`
(`postgresql+asyncpg://dstack@127.0.0.1:PORT/NAME`, its `DSTACK_DATABASE_URL`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from .processes import ProcessStartError, find_free_port

SETUP_SCRIPT = Path(__file__).with_name("setup_postgres.sh")
ROLE = "dstack"
SYSTEM_USER = "postgres"  # who runs the cluster when we are root; the Debian package makes it

# Speed over durability: the cluster dies with the tests.
DEFAULT_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",  # dstack keeps a pool per server; a few servers may share
}


class PostgresError(RuntimeError):
    """PostgreSQL could not be installed, initialised or started; the message says why."""


@functools.cache
def postgres_bindir() -> Path:
    """The directory with `initdb`, `postgres` and `psql`, installing the package if needed."""
    done = subprocess.run(
        ["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        raise PostgresError(f"{SETUP_SCRIPT.name} failed:\n{done.stderr[-2000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def _drop_privileges() -> list[str]:
    """The command prefix that runs a Postgres binary: as `postgres` when we are root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError as exc:
        raise PostgresError(f"running as root and there is no {SYSTEM_USER!r} user") from exc
    return ["setpriv", f"--reuid={SYSTEM_USER}", f"--regid={SYSTEM_USER}", "--init-groups", "--"]


class Postgres:
    """One PostgreSQL cluster in a temporary directory, on a free loopback port.

    Usage::

        with Postgres() as pg:
            url = pg.create_database("dstack1")  # a DSTACK_DATABASE_URL

    Args:
        port: Port to listen on. Default: a free one (retried on another if taken meanwhile).
        settings: Server settings (`-c name=value`) over `DEFAULT_SETTINGS`.
        startup_timeout: Seconds for the cluster to accept connections.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self._requested_port = port
        self._port: int | None = None
        self._settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self._startup_timeout = startup_timeout
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None  # initdb and start, wall time

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("postgres not started")
        return self._port

    @property
    def directory(self) -> Path:
        """The cluster's temporary directory (`data/` and `postgres.log`)."""
        if self._dir is None:
            raise RuntimeError("postgres not started")
        return self._dir

    @property
    def log_path(self) -> Path:
        return self.directory / "postgres.log"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def url(self, database: str) -> str:
        """The SQLAlchemy URL dstack takes as `DSTACK_DATABASE_URL` for `database`."""
        return f"postgresql+asyncpg://{ROLE}@127.0.0.1:{self.port}/{database}"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> Self:
        if self._proc is not None:
            raise RuntimeError("postgres already started")
        started = time.monotonic()
        bindir = postgres_bindir()
        prefix = _drop_privileges()
        self._dir = Path(tempfile.mkdtemp(prefix="dstack-harness-pg-"))
        if prefix:
            shutil.chown(self._dir, SYSTEM_USER, SYSTEM_USER)
        data = self._dir / "data"
        done = subprocess.run(
            [
                *prefix,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                ROLE,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            self._remove_dir()
            raise PostgresError(f"initdb failed:\n{done.stdout[-1000:]}{done.stderr[-2000:]}")
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(attempts):
            try:
                self._start_once(bindir, prefix, data)
                break
            except ProcessStartError as exc:
                if "already in use" not in str(exc) or attempt == attempts - 1:
                    self.stop()
                    raise
        atexit.register(self.stop)
        self.startup_seconds = time.monotonic() - started
        return self

    def _start_once(self, bindir: Path, prefix: list[str], data: Path) -> None:
        self._port = self._requested_port or find_free_port()
        args = [*prefix, str(bindir / "postgres"), "-D", str(data), "-p", str(self._port)]
        args += ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="]
        for name, value in self._settings.items():
            args += ["-c", f"{name}={value}"]
        with open(self.log_path, "ab") as out:
            if prefix:
                shutil.chown(self.log_path, SYSTEM_USER, SYSTEM_USER)
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self._startup_timeout
        while not self._accepts(bindir):
            if (code := self._proc.poll()) is not None:
                self._proc = None
                raise ProcessStartError(f"postgres exited {code}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self._kill()
                raise ProcessStartError(
                    f"postgres did not accept connections in {self._startup_timeout:.0f} s:\n{tail}"
                )
            time.sleep(0.05)

    def _accepts(self, bindir: Path) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                pass
        except OSError:
            return False
        done = subprocess.run(
            [str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return done.returncode == 0

    def create_database(self, name: str) -> str:
        """Create database `name` (an identifier: letters, digits, `_`); its URL."""
        if not name.replace("_", "").isalnum() or not name[0].isalpha():
            raise ValueError(f"not a plain identifier: {name!r}")
        self.psql("postgres", f'CREATE DATABASE "{name}"')
        return self.url(name)

    def psql(self, database: str, sql: str) -> str:
        """Run `sql` in `database` with `psql`; its unaligned, tuples-only output."""
        done = subprocess.run(
            [
                str(postgres_bindir() / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                ROLE,
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise PostgresError(f"psql {sql!r} failed: {done.stderr.strip()}")
        return done.stdout

    def stop(self) -> None:
        """Fast shutdown (SIGINT: clients are disconnected), SIGKILL after 10 s; then the
        directory is removed. Idempotent."""
        atexit.unregister(self.stop)
        self._kill()
        self._remove_dir()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def _remove_dir(self) -> None:
        directory, self._dir = self._dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (FileNotFoundError, RuntimeError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<Postgres {self._port} {state}>"
