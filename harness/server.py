"""A real `dstack server` on a free loopback port, with a temporary HOME and SQLite (or
PostgreSQL: `database="postgres"`), and its log, from which tests count the upstream calls it
processed. It can be signalled, killed and started again on the same port and data
(`send_signal`, `kill`, `restart`) for the fault tests.

Environment of the server process: every inherited `DSTACK_*` variable is dropped, `HOME` and
`XDG_*` point into the temp dir, `DSTACK_SERVER_DIR` is `<home>/.dstack/server` (so SQLite lives
in `<home>/.dstack/server/data/sqlite.db` and `~/.dstack` is never touched), an admin token is
generated, and `DSTACK_SERVER_LOG_LEVEL=DEBUG` with `DSTACK_SERVER_LOG_FORMAT=standard` (one
record per line; the default `rich` format wraps long lines). Project `main` exists from the
start, with `admin` as its admin member.

Postgres: `database="postgres"` starts a cluster of the server's own (postgres.py) and points
`DSTACK_DATABASE_URL` at a fresh database in it; `database=<a running Postgres>` takes a fresh
database in that cluster instead (several servers, one cluster). dstack 0.18.40 and 0.22.5
both take `DSTACK_DATABASE_URL` (asyncpg is in their `server` extra). The cluster outlives
`kill`/`restart` of the server and is stopped with it when the server owns it.

Counting upstream calls: with DEBUG logging an HTTP middleware of the server writes one line per
request, every method and path, `/healthcheck` included:

    DEBUG 2026-11-29T05:47:38.433 dstack._internal.server.app Processed request
    POST http://127.0.0.1:38111/api/project/main/runs/stop?q=1 in 0.036001s. Status: 200

(one line, wrapped here). The URL's host is the request's `Host` header and the query is kept;
`DstackServer.count_requests` compares the path only. The line is written after the handler has
finished but before the response leaves, and every record is flushed, so once a client has its
response the line is in the file (checked: 100 of 100 stop and delete calls were visible at
once). A request nobody waited for may show up later: `DstackServer.wait_for_count` polls until
the count is stable.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .postgres import Postgres
from .processes import Process, ProcessStartError, find_free_port

PathLike = str | os.PathLike[str]
DATABASES = ("sqlite", "postgres")
_DATABASE_SERIALS = itertools.count(1)

_SERVER_LOG_NAME = "server.log"
_STAMP_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?")
# A record of dstack's background pipeline: 0.18.40's scheduled `background.tasks`, 0.22.5's
# `background.pipeline_tasks` and `background.scheduled_tasks` (docs/dstack-api.md,
# Background passes).
_BACKGROUND_RE = re.compile(
    r"^[A-Z]+ (?P<stamp>\d{4}-\d\d-\d\dT\S+) dstack\._internal\.server\.background\."
)
_PROCESSED_RE = re.compile(
    r" Processed request (?P<method>[A-Z]+) (?P<url>\S+) in (?P<secs>[0-9.]+)s\."
    r" Status: (?P<status>\d+)\s*$"
)


class ServerLike(Protocol):
    """What the API helpers need: a base URL and the admin token."""

    @property
    def url(self) -> str: ...

    @property
    def admin_token(self) -> str: ...


@dataclass(frozen=True)
class ProcessedRequest:
    """One `Processed request ...` line from the server log."""

    method: str
    url: str
    path: str
    query: str
    seconds: float
    status: int
    # When the line was written (the record's timestamp, seconds on the server's clock; None
    # if the line has none): about when the handler finished.
    finished_at: float | None = None

    @property
    def started_at(self) -> float | None:
        """About when the handler started: its finish less its own time."""
        return None if self.finished_at is None else self.finished_at - self.seconds


def parse_processed_requests(text: str) -> list[ProcessedRequest]:
    """Parse every `Processed request` line in `text` (other lines are ignored)."""
    result: list[ProcessedRequest] = []
    for line in text.splitlines():
        m = _PROCESSED_RE.search(line)
        if m is None:
            continue
        split = urllib.parse.urlsplit(m["url"])
        stamp = _STAMP_RE.search(line, 0, m.start())
        result.append(
            ProcessedRequest(
                method=m["method"],
                url=m["url"],
                path=split.path,
                query=split.query,
                seconds=float(m["secs"]),
                status=int(m["status"]),
                finished_at=(
                    datetime.datetime.fromisoformat(stamp[0]).timestamp() if stamp else None
                ),
            )
        )
    return result


def parse_background_stamps(text: str) -> list[float]:
    """When each record of dstack's background pipeline in `text` was written (seconds on the
    server's clock): its passes over runs, jobs and instances, which share the server's
    process and database with the requests it answers."""
    return [
        datetime.datetime.fromisoformat(m["stamp"]).timestamp()
        for line in text.splitlines()
        if (m := _BACKGROUND_RE.match(line)) is not None
    ]


def dstack_executable() -> Path:
    """The `dstack` entry point installed next to the running interpreter.

    `sys.executable` is deliberately not resolved: in a venv it is a symlink
    and the entry point lives in the venv's `bin` directory.
    """
    bindir = Path(sys.executable).parent
    for name in ("dstack", "dstack.exe"):
        candidate = bindir / name
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"no dstack executable next to {sys.executable}; install dstack[server] in this environment"
    )


def isolated_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of `os.environ` without `DSTACK_*` and with `HOME`/`XDG_*` in `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSTACK_")}
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        PYTHONUNBUFFERED="1",
        NO_COLOR="1",
    )
    if extra:
        env.update(extra)
    return env


class DstackServer:
    """A real `dstack server` subprocess on a free loopback port.

    Usage::

        with DstackServer() as server:
            mark = server.log_mark()
            ...  # hit server.url (or a proxy in front of it)
            assert server.count_requests("/runs/stop", since=mark) == 1

    Startup takes ~18 s on a 2-CPU machine (mostly imports and DB migrations),
    so share one server per test session where possible.

    Args:
        workdir: Directory for `home/` and `server.log`. Default: a fresh
            temp dir that `stop` removes (unless `keep_workdir`). A
            directory given by the caller is never removed.
        port: Port to listen on. Default: a free port.
        admin_token: Admin token. Default: a random one.
        startup_timeout: Seconds to wait for `GET /healthcheck` to answer 200.
        stop_timeout: Seconds between SIGTERM and SIGKILL in `stop`.
        extra_env: Extra environment variables for the server process.
        keep_workdir: Keep an auto-created temp dir after `stop`.
        executable: the `dstack` entry point to run (another version's virtual environment);
            default: the one installed next to the running interpreter.
        server_config: the text of `server/config.yml`, written before the first start (the
            server applies it at start-up); default: none, the server writes its own.
        database: `"sqlite"` (default: a file in the server's HOME), `"postgres"` (a cluster
            of its own, started first and stopped with it), or a running `Postgres` to take a
            fresh database in (the caller stops it).
    """

    def __init__(
        self,
        *,
        workdir: PathLike | None = None,
        port: int | None = None,
        admin_token: str | None = None,
        startup_timeout: float = 90.0,
        stop_timeout: float = 5.0,
        extra_env: Mapping[str, str] | None = None,
        keep_workdir: bool = False,
        executable: PathLike | None = None,
        server_config: str | None = None,
        database: str | Postgres = "sqlite",
    ) -> None:
        if isinstance(database, str) and database not in DATABASES:
            raise ValueError(f"database must be one of {DATABASES} or a Postgres: {database!r}")
        self._database = database
        self._postgres: Postgres | None = None  # the cluster in use, once started
        self._owns_postgres = database == "postgres"
        self._database_url: str | None = None
        self._owns_workdir = workdir is None
        self._workdir = (
            Path(tempfile.mkdtemp(prefix="dstack-harness-"))
            if workdir is None
            else Path(workdir).absolute()
        )
        self._requested_port = port
        self._port: int | None = None
        self._admin_token = admin_token or secrets.token_hex(16)
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._extra_env = dict(extra_env or {})
        self._keep_workdir = keep_workdir
        self._executable = Path(executable) if executable is not None else dstack_executable()
        self._server_config = server_config
        self._process: Process | None = None
        self._version: str | None = None
        self.startup_seconds: float | None = None  # wall time of the last successful start

    # -- properties ---------------------------------------------------------

    @property
    def workdir(self) -> Path:
        """Temp directory holding `home/` and the log file."""
        return self._workdir

    @property
    def home(self) -> Path:
        """`HOME` of the server process (server data in `.dstack/server`)."""
        return self._workdir / "home"

    @property
    def log_path(self) -> Path:
        """File receiving the server's stdout and stderr."""
        return self._workdir / _SERVER_LOG_NAME

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL without trailing slash, e.g. `http://127.0.0.1:38111`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_token(self) -> str:
        return self._admin_token

    @property
    def executable(self) -> Path:
        """The `dstack` entry point this server runs."""
        return self._executable

    @property
    def sdk_python(self) -> Path | None:
        """The interpreter of this server's own dstack SDK when it is not the running one
        (another version's virtual environment), else None: the SDK can be imported here."""
        if self._executable == dstack_executable():
            return None
        return self._executable.parent / "python"

    @property
    def version(self) -> str:
        """The server's own version string (`POST /api/server/get_info`), e.g. `"0.18.40"`."""
        if self._version is None:
            req = urllib.request.Request(
                f"{self.url}/api/server/get_info",
                data=b"{}",
                method="POST",
                headers={
                    "Authorization": f"Bearer {self._admin_token}",
                    "Content-Type": "application/json",
                },
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                self._version = str(json.loads(resp.read())["server_version"])
        return self._version

    @property
    def database(self) -> str:
        """`"sqlite"` or `"postgres"`."""
        return "sqlite" if self._database == "sqlite" else "postgres"

    @property
    def database_url(self) -> str | None:
        """The `DSTACK_DATABASE_URL` given to the server; None for its default SQLite."""
        return self._database_url

    @property
    def postgres(self) -> Postgres | None:
        """The Postgres cluster behind the server, if any."""
        return self._postgres

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def is_running(self) -> bool:
        return self._process is not None and self._process.is_running()

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> DstackServer:
        """Start the server and block until `/healthcheck` answers 200.

        Raises `ProcessStartError` (with the tail of the server log) if the process exits or
        the timeout passes. A port taken meanwhile by someone else is retried on another port.
        """
        if self._process is not None:
            raise RuntimeError("server already started")
        if self._database_url is None and self._database != "sqlite":
            self._prepare_postgres()
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(attempts):
            try:
                self._start_once(self._requested_port or find_free_port())
                return self
            except ProcessStartError as exc:
                port_clash = "address already in use" in str(exc).lower()
                if not port_clash or attempt == attempts - 1:
                    self._stop_postgres()  # `with` never calls stop() when start fails
                    self._database_url = None
                    raise
        raise AssertionError("unreachable")

    def _prepare_postgres(self) -> None:
        if isinstance(self._database, Postgres):
            self._postgres = self._database
        else:
            self._postgres = Postgres().start()
        name = f"dstack{os.getpid()}x{next(_DATABASE_SERIALS)}"
        try:
            self._database_url = self._postgres.create_database(name)
        except BaseException:
            self._stop_postgres()
            raise

    def _stop_postgres(self) -> None:
        postgres, self._postgres = self._postgres, None
        if postgres is not None and self._owns_postgres:
            postgres.stop()

    def _start_once(self, port: int) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.home / ".dstack" / "server" / "config.yml"
        if self._server_config is not None and not config.exists():
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(self._server_config, encoding="utf-8")
        self._port = port
        database = {"DSTACK_DATABASE_URL": self._database_url} if self._database_url else {}
        env = isolated_env(
            self.home,
            {
                "DSTACK_SERVER_DIR": str(self.home / ".dstack" / "server"),
                "DSTACK_SERVER_ADMIN_TOKEN": self._admin_token,
                "DSTACK_SERVER_LOG_LEVEL": "DEBUG",
                "DSTACK_SERVER_LOG_FORMAT": "standard",
                "DSTACK_DO_NOT_UPDATE_DEFAULT_PROJECT": "1",
                "DSTACK_SERVER_RELOAD_DISABLED": "1",
                **database,
                **self._extra_env,
            },
        )
        cmd = [str(self._executable), "server", "--host", "127.0.0.1", "--port", str(self._port)]
        process = Process(
            cmd,
            f"{self.url}/healthcheck",
            self.log_path,
            env=env,
            cwd=self._workdir,
            grace=self._stop_timeout,
            startup_timeout=self._startup_timeout,
        )
        process.start()
        self._process = process
        self.startup_seconds = process.startup_seconds

    def stop(self) -> None:
        """SIGTERM the server's process group; SIGKILL it after `stop_timeout` s.

        A graceful shutdown drains the background pipeline and may take ~35 s when many runs
        are pending, so the default grace period is short. Idempotent. Removes an auto-created
        workdir unless `keep_workdir`.
        """
        process, self._process = self._process, None
        if process is not None:
            process.stop()
        self._stop_postgres()
        self._database_url = None
        if self._owns_workdir and not self._keep_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)

    # -- faults -------------------------------------------------------------

    def send_signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the server's process group (SIGSTOP freezes it, SIGCONT thaws it)."""
        if self._process is None or self._process.pid is None:
            raise RuntimeError("server not started")
        os.killpg(self._process.pid, sig)

    def kill(self) -> None:
        """SIGKILL the server (no shutdown of any kind), keeping its port, data and log for
        `restart`; its database cluster, if any, goes on."""
        process, self._process = self._process, None
        if process is None or process.proc is None:
            raise RuntimeError("server not started")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.proc.pid, signal.SIGKILL)
        process.proc.wait(timeout=10)
        process.stop()  # forget it (atexit)

    def restart(self, *, graceful: bool = True) -> DstackServer:
        """Stop the server (SIGTERM, then SIGKILL after `stop_timeout`; or SIGKILL at once when
        not `graceful`) and start it again on the same port, data and log, appended to, so
        marks taken before stay valid. Returns once it answers again."""
        if self._process is not None:
            if graceful:
                process, self._process = self._process, None
                process.stop()
            else:
                self.kill()
        self._start_once_on_port()
        return self

    def start_again(self) -> DstackServer:
        """Start a server that was `kill`ed, on the same port, data and log."""
        if self._process is not None:
            raise RuntimeError("server already running")
        self._start_once_on_port()
        return self

    def _start_once_on_port(self) -> None:
        # The port must stay the same (the proxy points at it): retried while a socket of the
        # old process still holds it, never moved.
        deadline = time.monotonic() + 10
        while True:
            try:
                self._start_once(self.port)
                return
            except ProcessStartError as exc:
                if "address already in use" not in str(exc).lower():
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def __enter__(self) -> DstackServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<DstackServer {self._port} {state} workdir={self._workdir}>"

    # -- log access ---------------------------------------------------------

    def read_log(self, since: int = 0) -> str:
        """Complete lines of the server log from byte offset `since`.

        A partly written last line (no trailing newline yet) is left out.
        """
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                data = f.read()
        except FileNotFoundError:
            return ""
        end = data.rfind(b"\n")
        return data[: end + 1].decode("utf-8", errors="replace") if end >= 0 else ""

    def log_tail(self, lines: int = 60) -> str:
        """The last `lines` lines of the server log (for error messages)."""
        return "\n".join(self.read_log().splitlines()[-lines:])

    def log_mark(self) -> int:
        """Current size of the log in bytes; pass it as `since` to count later requests."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def processed_requests(
        self, since: int = 0, method: str | None = None
    ) -> list[ProcessedRequest]:
        """Requests the server finished after the mark `since`, optionally of one `method`."""
        reqs = parse_processed_requests(self.read_log(since))
        if method is not None:
            reqs = [r for r in reqs if r.method == method.upper()]
        return reqs

    def count_requests(
        self,
        path_suffix: str,
        since: int,
        method: str | None = "POST",
        status: int | None = None,
    ) -> int:
        """Count requests after mark `since` whose URL path ends with `path_suffix`.

        Args:
            path_suffix: e.g. `"/runs/stop"` or `"/api/project/main/runs/delete"`.
                Compared with the path only (query string ignored).
            since: value from `log_mark`.
            method: HTTP method to match; `None` matches any.
            status: only count responses with this status code.

        Synchronous for requests whose response the client has already
        received (see module docstring). For requests nobody waited for, use
        `wait_for_count`.
        """
        return sum(
            1
            for r in self.processed_requests(since, method)
            if r.path.endswith(path_suffix) and (status is None or r.status == status)
        )

    def wait_for_count(
        self,
        path_suffix: str,
        since: int,
        method: str | None = "POST",
        *,
        at_least: int = 0,
        status: int | None = None,
        settle: float = 0.3,
        timeout: float = 5.0,
        poll: float = 0.05,
    ) -> int:
        """Poll `count_requests` until it is `>= at_least` and unchanged for `settle` s.

        Returns the count then, or the last count seen when `timeout` runs
        out (the caller asserts on the value). Only needed when requests can
        reach the server after the client got its answer (fire-and-forget,
        background retries, cancelled requests). For plain request/response
        flows `count_requests` is already exact.
        """
        deadline = time.monotonic() + timeout
        last = self.count_requests(path_suffix, since, method, status)
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(poll)
            now = self.count_requests(path_suffix, since, method, status)
            if now != last:
                last, stable_since = now, time.monotonic()
            elif last >= at_least and time.monotonic() - stable_since >= settle:
                break
        return last
