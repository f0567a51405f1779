"""Harness for end-to-end tests and benchmarks against a REAL ``dstack server``.

Plain Python (standard library only at import time; no pytest), so it can be
used from pytest fixtures as well as from standalone demo/benchmark scripts.
Every helper is synchronous and blocking; from an ``async`` test call it via
``await asyncio.to_thread(...)`` (or ``loop.run_in_executor``).

Verified against dstack 0.22.5 (``pip install "dstack[server]==0.22.5"``).

Server
------
:class:`DstackServer` runs ``<dir of sys.executable>/dstack server --host
127.0.0.1 --port <free port>`` in a fresh temporary directory::

    with DstackServer() as server:
        print(server.url, server.admin_token, server.log_path, server.home)

Environment of the server process: every inherited ``DSTACK_*`` variable is
dropped, ``HOME`` / ``XDG_*`` point into the temp dir, ``DSTACK_SERVER_DIR`` is
``<home>/.dstack/server`` (so the SQLite database lives in
``<home>/.dstack/server/data/sqlite.db`` and ``~/.dstack`` is never touched),
``DSTACK_SERVER_ADMIN_TOKEN=<random>``, ``DSTACK_SERVER_LOG_LEVEL=DEBUG``,
``DSTACK_SERVER_LOG_FORMAT=standard`` (one record per line; the default
``rich`` format wraps long lines), ``PYTHONUNBUFFERED=1``,
``DSTACK_DO_NOT_UPDATE_DEFAULT_PROJECT=1`` and ``DSTACK_SERVER_RELOAD_DISABLED=1``.
Project ``main`` exists from the start, with ``admin`` as its ``admin`` member.

Counting upstream calls
-----------------------
With DEBUG logging, an HTTP middleware of the server writes one line per
request (every method and path, including ``/healthcheck``). This is one
line, wrapped here::

    DEBUG 2026-11-29T05:47:38.433 dstack._internal.server.app Processed request
    POST http://127.0.0.1:38111/api/project/main/runs/stop?q=1 in 0.036001s. Status: 200

The URL is absolute: its host is the request's ``Host`` header, and the query
string is kept. :meth:`DstackServer.count_requests` compares only the URL
*path*. The middleware writes the line after the handler has finished but
*before* the response goes back to the client, and the log handler flushes
every record. So by the time a client has the response, the line is already
in the file (checked: 100 of 100 stop and delete calls were visible right
away). A request the client never waited for (e.g. a proxy that fires a
request upstream and lets the caller go early, or a cancelled one) may show
up later. :meth:`DstackServer.wait_for_count` polls until the count is stable
for such cases.

Runs that stay active without any cloud
---------------------------------------
A task with ``retry: {on_events: [no-capacity], duration: 1d}`` on a server
with no backends and no fleets never gets an instance. It is ``submitted``
when created, ``pending`` ~5-10 s later, and then goes back and forth
between ``pending`` and ``submitted`` (a resubmission every ~15-40 s) for a
day. See :func:`create_active_runs`. Such runs keep the server's background
pipeline busy: about 100% of one CPU with ~130 pending runs. A graceful
shutdown then took ~35 s (it took ~3 s with 10 active runs). That is why
:meth:`DstackServer.stop` escalates to SIGKILL after a short grace period.
A stopped ``pending`` run is ``terminated`` within ~1 s. A stopped
``submitted`` run (one with a job) can stay ``terminating`` for more than 8 s.

Known upstream race (0.22.5): ``runs/stop`` answers 200 and marks a pending run
``terminating``, but the background RunPipeline can overwrite that within
~0.15-2 s and put the run back to ``submitted``/``pending`` with
``termination_reason = null``. A 200 from stop therefore does not guarantee
that the run stops. :func:`stop_runs_until_finished` re-issues the stop until
the runs are really finished. (Not reproduced in 3 x 40 stops by this harness,
but reported in the project's API notes.)

Driving the dstack CLI against any URL (e.g. the proxy)
-------------------------------------------------------
Each command runs with an isolated ``HOME`` and an empty stdin. See
:func:`cli_env`; the once-per-day update check to get.dstack.ai is skipped
by touching ``~/.cache/.dstack/cli/last_check``. These commands work
(verified on 0.22.5); every call takes ~3 s, mostly the CLI's imports::

    dstack project add --name main --url URL --token TOKEN -y
        # NAME must be an existing project: checked via POST /api/projects/main/get.
        # Writes $HOME/.dstack/config.yml; the first project added is the default.
    dstack apply -f task.dstack.yml -y -d [--no-repo]
        # -> "Run NAME submitted, detaching...", exit 0 (random name if none is given).
        # Upstream calls, with or without --no-repo:
        #   repos/init, runs/get_plan, fleets/list, runs/apply.
    dstack ps            # table; its STATUS column shows status messages ("no fleets")
    dstack ps --json     # {"project": "main", "runs": [{... "status": "pending" ...}]}
    dstack ps -a         # also finished runs
    dstack stop -y NAME      # one run per call -> "Stopped"; upstream: runs/get, runs/stop
    dstack stop -x -y NAME   # abort -> "Aborted" (termination_reason aborted_by_user)

``task.dstack.yml`` is :func:`task_yaml`. ``dstack apply`` needs no git repo:
a configuration without ``repos:`` runs without one, whether the cwd is an
empty directory or inside a git repo, and ``--no-repo`` makes this explicit.
Another way to choose the target is to set ``DSTACK_SERVER_URL``,
``DSTACK_TOKEN`` and ``DSTACK_PROJECT`` in the environment (``env=`` of
:func:`run_cli`), which needs no ``project add`` and no config file. The CLI
prints its errors on stdout and exits with 1, e.g. ``Access to
URL/api/projects/x/get is denied. Please check your access token`` or
``Run NAME not found``. Use :func:`run_cli`, :func:`cli_add_project` and
:func:`write_task_file`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "ACTIVE_STATUSES",
    "DEFAULT_PROJECT",
    "FINISHED_STATUSES",
    "ApiError",
    "CliError",
    "DstackServer",
    "ProcessedRequest",
    "RunInfo",
    "ServerLike",
    "ServerStartError",
    "add_member",
    "api_post",
    "cli_add_project",
    "cli_env",
    "create_active_runs",
    "create_project",
    "create_user",
    "delete_runs",
    "dstack_executable",
    "find_free_port",
    "list_runs",
    "parse_processed_requests",
    "run_cli",
    "run_infos",
    "run_states",
    "stop_runs",
    "stop_runs_until_finished",
    "task_configuration",
    "task_yaml",
    "wait_for_runs",
    "write_task_file",
]

DEFAULT_PROJECT = "main"
"""Project created by the server at first start, with ``admin`` as its admin."""

FINISHED_STATUSES: frozenset[str] = frozenset({"terminated", "failed", "done"})
"""Run statuses that ``runs/delete`` accepts (``RunStatus.is_finished()``)."""

ACTIVE_STATUSES: frozenset[str] = frozenset(
    {"pending", "submitted", "provisioning", "running", "terminating"}
)
"""Every run status that is not finished."""

_RUNS_LIST_PAGE = 100  # server-side maximum of ``limit`` for runs/list
_SERVER_LOG_NAME = "server.log"
_PROCESSED_RE = re.compile(
    r" Processed request (?P<method>[A-Z]+) (?P<url>\S+) in (?P<secs>[0-9.]+)s\."
    r" Status: (?P<status>\d+)\s*$"
)

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- #
# Server
# --------------------------------------------------------------------------- #


class ServerStartError(RuntimeError):
    """The dstack server died or did not become healthy in time."""


class ServerLike(Protocol):
    """What the API helpers need: a base URL and the admin token."""

    @property
    def url(self) -> str: ...

    @property
    def admin_token(self) -> str: ...


@dataclass(frozen=True)
class ProcessedRequest:
    """One ``Processed request ...`` line from the server log."""

    method: str
    url: str
    path: str
    query: str
    seconds: float
    status: int


def parse_processed_requests(text: str) -> list[ProcessedRequest]:
    """Parse every ``Processed request`` line in ``text`` (other lines are ignored)."""
    result: list[ProcessedRequest] = []
    for line in text.splitlines():
        m = _PROCESSED_RE.search(line)
        if m is None:
            continue
        split = urllib.parse.urlsplit(m["url"])
        result.append(
            ProcessedRequest(
                method=m["method"],
                url=m["url"],
                path=split.path,
                query=split.query,
                seconds=float(m["secs"]),
                status=int(m["status"]),
            )
        )
    return result


def find_free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def dstack_executable() -> Path:
    """The ``dstack`` entry point installed next to the running interpreter.

    ``sys.executable`` is deliberately not resolved: in a venv it is a symlink
    and the entry point lives in the venv's ``bin`` directory.
    """
    bindir = Path(sys.executable).parent
    for name in ("dstack", "dstack.exe"):
        candidate = bindir / name
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"no dstack executable next to {sys.executable}; install dstack[server] in this environment"
    )


def _isolated_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``os.environ`` without ``DSTACK_*`` and with ``HOME``/``XDG_*`` in ``home``."""
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
    """A real ``dstack server`` subprocess on a free loopback port.

    Usage::

        with DstackServer() as server:
            mark = server.log_mark()
            ...  # hit server.url (or a proxy in front of it)
            assert server.count_requests("/runs/stop", since=mark) == 1

    Startup takes ~18 s on a 2-CPU machine (mostly imports and DB migrations),
    so share one server per test session where possible.

    Args:
        workdir: Directory for ``home/`` and ``server.log``. Default: a fresh
            temp dir that :meth:`stop` removes (unless ``keep_workdir``). A
            directory given by the caller is never removed.
        port: Port to listen on. Default: a free port.
        admin_token: Admin token. Default: a random one.
        startup_timeout: Seconds to wait for ``GET /healthcheck`` to answer 200.
        stop_timeout: Seconds between SIGTERM and SIGKILL in :meth:`stop`.
        extra_env: Extra environment variables for the server process.
        keep_workdir: Keep an auto-created temp dir after :meth:`stop`.
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
    ) -> None:
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
        self._proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        """Wall time of the last successful :meth:`start`."""

    # -- properties ---------------------------------------------------------

    @property
    def workdir(self) -> Path:
        """Temp directory holding ``home/`` and the log file."""
        return self._workdir

    @property
    def home(self) -> Path:
        """``HOME`` of the server process (server data in ``.dstack/server``)."""
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
        """Base URL without trailing slash, e.g. ``http://127.0.0.1:38111``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_token(self) -> str:
        return self._admin_token

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> DstackServer:
        """Start the server and block until ``/healthcheck`` answers 200.

        Raises:
            ServerStartError: the process exited or the timeout passed; the
                message holds the tail of the server log.
        """
        if self._proc is not None:
            raise RuntimeError("server already started")
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(attempts):
            try:
                self._start_once()
                return self
            except ServerStartError as exc:
                port_clash = "address already in use" in str(exc).lower()
                if not port_clash or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self._port = self._requested_port or find_free_port()
        env = _isolated_env(
            self.home,
            {
                "DSTACK_SERVER_DIR": str(self.home / ".dstack" / "server"),
                "DSTACK_SERVER_ADMIN_TOKEN": self._admin_token,
                "DSTACK_SERVER_LOG_LEVEL": "DEBUG",
                "DSTACK_SERVER_LOG_FORMAT": "standard",
                "DSTACK_DO_NOT_UPDATE_DEFAULT_PROJECT": "1",
                "DSTACK_SERVER_RELOAD_DISABLED": "1",
                **self._extra_env,
            },
        )
        cmd = [
            str(dstack_executable()),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self._port),
        ]
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self._workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # keep terminal signals away; own process group
            )
        atexit.register(self.stop)
        deadline = started + self._startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                atexit.unregister(self.stop)
                raise ServerStartError(
                    f"dstack server exited with code {code} during startup;"
                    f" log tail:\n{self.log_tail()}"
                )
            if self._healthy():
                self.startup_seconds = time.monotonic() - started
                return
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise ServerStartError(
                    f"dstack server not healthy after {self._startup_timeout:.0f}s;"
                    f" log tail:\n{tail}"
                )
            time.sleep(0.2)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthcheck", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """SIGTERM the server's process group; SIGKILL it after ``stop_timeout`` s.

        A graceful shutdown drains the background pipeline and may take ~35 s
        when many runs are pending, so the default grace period is short.
        Idempotent. Removes an auto-created workdir unless ``keep_workdir``.
        """
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is not None and proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=self._stop_timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)
        if self._owns_workdir and not self._keep_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> DstackServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<DstackServer {self._port} {state} workdir={self._workdir}>"

    # -- log access ---------------------------------------------------------

    def read_log(self, since: int = 0) -> str:
        """Complete lines of the server log from byte offset ``since``.

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
        """The last ``lines`` lines of the server log (for error messages)."""
        return "\n".join(self.read_log().splitlines()[-lines:])

    def log_mark(self) -> int:
        """Current size of the log in bytes; pass it as ``since`` to count later requests."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def processed_requests(
        self, since: int = 0, method: str | None = None
    ) -> list[ProcessedRequest]:
        """Requests the server finished after the mark ``since``, optionally of one ``method``."""
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
        """Count requests after mark ``since`` whose URL path ends with ``path_suffix``.

        Args:
            path_suffix: e.g. ``"/runs/stop"`` or ``"/api/project/main/runs/delete"``.
                Compared with the path only (query string ignored).
            since: value from :meth:`log_mark`.
            method: HTTP method to match; ``None`` matches any.
            status: only count responses with this status code.

        Synchronous for requests whose response the client has already
        received (see module docstring). For requests nobody waited for, use
        :meth:`wait_for_count`.
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
        """Poll :meth:`count_requests` until it is ``>= at_least`` and unchanged for ``settle`` s.

        Returns the count then, or the last count seen when ``timeout`` runs
        out (the caller asserts on the value). Only needed when requests can
        reach the server after the client got its answer (fire-and-forget,
        background retries, cancelled requests). For plain request/response
        flows :meth:`count_requests` is already exact.
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


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the process group of a child started with ``start_new_session=True``."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


# --------------------------------------------------------------------------- #
# HTTP API helpers
# --------------------------------------------------------------------------- #


class ApiError(RuntimeError):
    """A non-2xx answer from the dstack API."""

    def __init__(self, status: int, body: str, path: str) -> None:
        super().__init__(f"POST {path} -> {status}: {body[:500]}")
        self.status = status
        self.body = body
        self.path = path

    def json(self) -> Any:
        return json.loads(self.body)


def api_post(
    server: ServerLike,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    url: str | None = None,
    timeout: float = 30.0,
) -> Any:
    """POST JSON ``body`` to ``path`` and return the decoded JSON answer.

    Args:
        server: gives the default base URL and the default (admin) token.
        path: e.g. ``"/api/project/main/runs/stop"``.
        token: bearer token; defaults to ``server.admin_token``.
        url: base URL to use instead of ``server.url`` (e.g. a proxy).

    Raises:
        ApiError: on any non-2xx status (``.status``, ``.body``).
    """
    base = (url or server.url).rstrip("/")
    data = json.dumps({} if body is None else body).encode()
    req = urllib.request.Request(
        base + path,
        data=data,
        method="POST",
        headers={
            "Authorization": f"Bearer {token or server.admin_token}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raise ApiError(exc.code, exc.read().decode("utf-8", "replace"), path) from None
    return json.loads(raw) if raw else None


def create_user(
    server: ServerLike, username: str, global_role: str = "user", *, email: str | None = None
) -> str:
    """Create a user as global admin and return their token.

    ``POST /api/users/create`` returns no token, so it is read with
    ``POST /api/users/get_user`` (``creds.token``). That call does not rotate
    the token, unlike ``users/refresh_token``. A new user has no project
    memberships; use :func:`add_member`, or let them :func:`create_project`.
    """
    body: dict[str, Any] = {"username": username, "global_role": global_role}
    if email is not None:
        body["email"] = email
    api_post(server, "/api/users/create", body)
    user = api_post(server, "/api/users/get_user", {"username": username})
    return str(user["creds"]["token"])


def create_project(server: ServerLike, project: str, *, token: str | None = None) -> None:
    """Create ``project``; the creator (admin by default) becomes owner and ``admin`` member."""
    api_post(server, "/api/projects/create", {"project_name": project}, token=token)


def add_member(
    server: ServerLike,
    project: str,
    username: str,
    role: str = "user",
    *,
    token: str | None = None,
) -> None:
    """Add ``username`` to ``project`` with ``role`` (``admin``/``manager``/``user``).

    Uses ``POST /api/projects/{project}/add_members`` (0.19.16+). This adds to
    the member list and does not replace it.
    """
    api_post(
        server,
        f"/api/projects/{project}/add_members",
        {"members": [{"username": username, "project_role": role}]},
        token=token,
    )


# --------------------------------------------------------------------------- #
# Runs
# --------------------------------------------------------------------------- #


def task_configuration(name: str | None = None) -> dict[str, Any]:
    """A task that stays active on a server without backends.

    ``retry.on_events: [no-capacity]`` with ``duration: 1d`` makes the server
    retry the "no fleet/offer" failure for a day instead of failing the run.
    """
    conf: dict[str, Any] = {
        "type": "task",
        "commands": ["sleep infinity"],
        "retry": {"on_events": ["no-capacity"], "duration": "1d"},
    }
    if name is not None:
        conf["name"] = name
    return conf


def task_yaml(name: str | None = None) -> str:
    """:func:`task_configuration` as ``.dstack.yml`` text (for the CLI)."""
    lines = ["type: task"]
    if name is not None:
        lines.append(f"name: {name}")
    lines += [
        "commands:",
        "  - sleep infinity",
        "retry:",
        "  on_events: [no-capacity]",
        "  duration: 1d",
    ]
    return "\n".join(lines) + "\n"


def _create_run(url: str, token: str, project: str, name: str) -> str:
    # Imported lazily: importing the SDK takes ~1.5 s.
    from dstack._internal.core.models.configurations import (  # type: ignore[import-untyped]
        parse_run_configuration,
    )
    from dstack.api import Client  # type: ignore[import-untyped]

    client = Client.from_config(project_name=project, server_url=url, user_token=token)
    run = client.runs.apply_configuration(
        configuration=parse_run_configuration(task_configuration(name)),
        repo=None,
        reserve_ports=False,
    )
    return str(run.status.value)


def create_active_runs(
    server: ServerLike,
    project: str,
    names: Sequence[str],
    token: str | None = None,
    *,
    url: str | None = None,
    workers: int = 1,
) -> dict[str, str]:
    """Create one never-ending task run per name with the dstack SDK.

    Each run goes through ``Client.runs.apply_configuration(conf, repo=None,
    reserve_ports=False)``, which sends ``runs/get_plan`` and then
    ``runs/apply``. The runs come back ``submitted`` and from then on cycle
    between ``submitted`` and ``pending``; both count as active.

    Measured on a 2-CPU machine, sequentially: 1 run ~0.15-0.25 s (plus ~1.5 s
    for the first SDK import in a process), 10 runs ~2 s, 40 runs ~10-12 s.
    The server does the work, and it is single-process with SQLite, so
    threads bring nothing (10 runs ~2 s, 40 runs 11-15 s with
    8-16 threads). ``workers`` is kept for other setups. The time per run
    grows as more runs are pending.

    Race (0.22.5): a stopped pending run can bounce back to pending within
    ~2 s. Stop with :func:`stop_runs_until_finished` when it must stick.

    Returns:
        ``{name: status}`` as returned by ``runs/apply`` (normally ``"submitted"``).
    """
    base = url or server.url
    tok = token or server.admin_token
    if workers <= 1 or len(names) <= 1:
        return {n: _create_run(base, tok, project, n) for n in names}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        statuses = list(pool.map(lambda n: _create_run(base, tok, project, n), names))
    return dict(zip(names, statuses, strict=True))


@dataclass(frozen=True)
class RunInfo:
    """The fields of a run (from ``runs/list``) that tests look at."""

    name: str
    id: str
    status: str
    termination_reason: str | None
    deleted: bool
    submitted_at: str

    @property
    def finished(self) -> bool:
        """True for ``terminated``/``failed``/``done``, and for deleted runs."""
        return self.deleted or self.status in FINISHED_STATUSES

    @property
    def active(self) -> bool:
        return not self.finished


def list_runs(
    server: ServerLike,
    project: str,
    token: str | None = None,
    *,
    url: str | None = None,
    only_active: bool = False,
) -> list[dict[str, Any]]:
    """Every run of ``project`` as raw JSON, newest first, all pages.

    ``POST /api/runs/list`` (a root route; the project is a body field, and
    there is no ``/api/project/{p}/runs/list``) returns at most 100 runs per
    page. This function pages with ``prev_submitted_at``/``prev_run_id``. In
    0.22.5 deleted runs are still listed, with ``"deleted": true``, unless
    ``only_active``.
    """
    body: dict[str, Any] = {
        "project_name": project,
        "only_active": only_active,
        "include_jobs": False,
        "limit": _RUNS_LIST_PAGE,
    }
    runs: list[dict[str, Any]] = []
    while True:
        page = api_post(server, "/api/runs/list", body, token=token, url=url)
        runs.extend(page)
        if len(page) < _RUNS_LIST_PAGE:
            return runs
        last = page[-1]
        body = {**body, "prev_submitted_at": last["submitted_at"], "prev_run_id": last["id"]}


def run_infos(
    server: ServerLike,
    project: str,
    token: str | None = None,
    *,
    url: str | None = None,
    include_deleted: bool = True,
) -> dict[str, RunInfo]:
    """``{run name: RunInfo}`` for ``project``; per name the newest non-deleted row wins.

    A name can have several rows (old deleted runs plus a new one). A live
    row beats a deleted one, and among rows of the same kind the newest wins.
    Names with only deleted rows are left out when ``include_deleted`` is false.
    """
    result: dict[str, RunInfo] = {}
    for raw in list_runs(server, project, token, url=url):
        info = RunInfo(
            name=raw["run_spec"]["run_name"],
            id=raw["id"],
            status=raw["status"],
            termination_reason=raw.get("termination_reason"),
            deleted=bool(raw.get("deleted")),
            submitted_at=raw["submitted_at"],
        )
        if info.deleted and not include_deleted:
            continue
        prev = result.get(info.name)
        if prev is None or (prev.deleted and not info.deleted):
            result[info.name] = info
    return result


def run_states(
    server: ServerLike,
    project: str,
    token: str | None = None,
    *,
    url: str | None = None,
    include_deleted: bool = False,
) -> dict[str, str]:
    """``{run name: status}`` for ``project``, e.g. ``{"r1": "pending", "r2": "terminated"}``.

    Deleted runs are left out by default. With ``include_deleted=True`` a name
    whose rows are all deleted maps to the pseudo status ``"deleted"``.
    Status values: ``pending``, ``submitted``, ``provisioning``, ``running``,
    ``terminating``, ``terminated``, ``failed``, ``done``. A stopped pending
    run ends as ``terminated`` with ``termination_reason`` ``stopped_by_user``
    (or ``aborted_by_user`` with ``abort=true``), usually within a few seconds,
    but see the race in the module docstring.
    """
    infos = run_infos(server, project, token, url=url, include_deleted=include_deleted)
    return {name: ("deleted" if i.deleted else i.status) for name, i in infos.items()}


def wait_for_runs(
    server: ServerLike,
    project: str,
    names: Iterable[str],
    *,
    finished: bool,
    token: str | None = None,
    url: str | None = None,
    timeout: float = 60.0,
    poll: float = 0.5,
) -> dict[str, str]:
    """Poll until every run in ``names`` is finished (or deleted), or with ``finished=False``
    exists and is active; return ``{name: status}``.

    A name that does not exist counts as neither. Because of the upstream race (a stopped
    pending run can go back to ``pending``/``submitted`` ~0.15-2 s after the stop), waiting
    for ``finished`` can time out after a stop that answered 200;
    :func:`stop_runs_until_finished` re-stops such runs.

    Raises:
        TimeoutError: listing the runs not yet in the wanted state.
    """
    wanted = list(dict.fromkeys(names))
    deadline = time.monotonic() + timeout
    while True:
        infos = run_infos(server, project, token, url=url)
        pending = [n for n in wanted if n not in infos or infos[n].finished is not finished]
        if not pending:
            return {n: infos[n].status for n in wanted}
        if time.monotonic() > deadline:
            seen = {n: (infos[n].status if n in infos else "missing") for n in pending}
            goal = "finished" if finished else "active"
            raise TimeoutError(f"runs not {goal} after {timeout:.0f}s: {seen}")
        time.sleep(poll)


def stop_runs(
    server: ServerLike,
    project: str,
    names: Sequence[str],
    *,
    abort: bool = False,
    token: str | None = None,
    url: str | None = None,
) -> None:
    """``POST /api/project/{project}/runs/stop`` with every name in one request."""
    api_post(
        server,
        f"/api/project/{project}/runs/stop",
        {"runs_names": list(names), "abort": abort},
        token=token,
        url=url,
    )


def delete_runs(
    server: ServerLike,
    project: str,
    names: Sequence[str],
    *,
    token: str | None = None,
    url: str | None = None,
) -> None:
    """``POST /api/project/{project}/runs/delete``; ApiError 400 if any run is unfinished."""
    api_post(
        server,
        f"/api/project/{project}/runs/delete",
        {"runs_names": list(names)},
        token=token,
        url=url,
    )


def stop_runs_until_finished(
    server: ServerLike,
    project: str,
    names: Sequence[str],
    *,
    abort: bool = False,
    token: str | None = None,
    url: str | None = None,
    timeout: float = 60.0,
    recheck_after: float = 3.0,
    poll: float = 0.5,
) -> dict[str, str]:
    """Stop ``names`` and keep re-stopping runs that come back, until all are finished.

    Works around the 0.22.5 race in which the background pipeline overwrites
    a user's stop. Each round stops every run that is active but not
    ``terminating`` (the first round: all of ``names`` that are active), then
    waits up to ``recheck_after`` s for the runs to finish. A ``terminating``
    run is left alone, since it is on its way; a stopped ``submitted`` run can
    stay ``terminating`` for more than 8 s. Suited to cleanup
    and to setting up a known state. Do not use it when counting the stop
    requests of the code under test: it sends extra ``runs/stop`` calls.

    Raises:
        TimeoutError: some runs were still active after ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    remaining = list(dict.fromkeys(names))
    first_round = True
    while True:
        infos = run_infos(server, project, token, url=url)
        remaining = [n for n in remaining if n in infos and infos[n].active]
        if not remaining:
            final = run_infos(server, project, token, url=url)
            return {
                n: ("deleted" if final[n].deleted else final[n].status) for n in names if n in final
            }
        if time.monotonic() > deadline:
            raise TimeoutError(f"runs still active after {timeout:.0f}s: {remaining}")
        to_stop = [n for n in remaining if first_round or infos[n].status != "terminating"]
        if to_stop:
            stop_runs(server, project, to_stop, abort=abort, token=token, url=url)
        first_round = False
        round_end = min(deadline, time.monotonic() + recheck_after)
        while time.monotonic() < round_end:
            time.sleep(poll)
            infos = run_infos(server, project, token, url=url)
            if all(n not in infos or infos[n].finished for n in remaining):
                break


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #


class CliError(subprocess.CalledProcessError):
    """A ``dstack`` CLI call exited with a non-zero code; the message includes its output."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout:\n{self.stdout or ''}\nstderr:\n{self.stderr or ''}"


def cli_env(home: PathLike, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a ``dstack`` CLI call with ``HOME=home``, without inherited ``DSTACK_*``.

    Also touches ``<home>/.cache/.dstack/cli/last_check`` so that the CLI skips
    its once-per-day update check (an HTTP call to get.dstack.ai). Pass
    ``{"DSTACK_SERVER_URL": ..., "DSTACK_TOKEN": ..., "DSTACK_PROJECT": ...}``
    as ``extra`` to skip ``dstack project add`` altogether.
    """
    home_path = Path(home).absolute()
    marker = home_path / ".cache" / ".dstack" / "cli" / "last_check"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return _isolated_env(home_path, extra)


def run_cli(
    args: Sequence[str],
    home: PathLike,
    cwd: PathLike | None = None,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    check: bool = False,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``dstack <args>`` non-interactively with an isolated ``HOME``.

    Args:
        args: arguments after ``dstack``, e.g. ``["ps", "--json"]``.
        home: ``HOME`` for the CLI; it holds ``.dstack/config.yml``.
        cwd: working directory (default: ``home``). For ``dstack apply`` with
            :func:`task_yaml` any directory works, inside a git repo or not.
        env: extra environment variables (see :func:`cli_env`).
        check: raise :class:`CliError` (a ``CalledProcessError``) on a non-zero exit code.
        input: text for stdin (stdin is empty otherwise, so the CLI never waits for input).

    Returns:
        The completed process, with ``stdout``/``stderr`` as text. The CLI
        prints its error messages on **stdout** (e.g. ``Failed to connect to
        dstack server ...``), with exit code 1.

    Raises:
        CliError: when ``check`` is true and the exit code is not zero.
    """
    home_path = Path(home).absolute()
    home_path.mkdir(parents=True, exist_ok=True)
    full_env = cli_env(home_path, env)
    full_env.setdefault("COLUMNS", "200")  # keep rich tables from truncating names
    cp = subprocess.run(
        [str(dstack_executable()), *args],
        cwd=str(Path(cwd).absolute() if cwd is not None else home_path),
        env=full_env,
        input="" if input is None else input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and cp.returncode != 0:
        raise CliError(cp.returncode, cp.args, cp.stdout, cp.stderr)
    return cp


def cli_add_project(home: PathLike, name: str, url: str, token: str) -> None:
    """``dstack project add --name NAME --url URL --token TOKEN -y``.

    ``name`` must be an existing project on the server that the token's user
    can see. The CLI checks this with ``POST /api/projects/{name}/get`` and
    exits with code 1 otherwise, e.g. ``Failed to connect to dstack server
    URL``. The first project added becomes the CLI's default project.

    Raises:
        CliError: the command failed.
    """
    run_cli(
        ["project", "add", "--name", name, "--url", url, "--token", token, "-y"],
        home,
        check=True,
    )


def write_task_file(
    directory: PathLike, run_name: str | None = None, filename: str = "task.dstack.yml"
) -> Path:
    """Write :func:`task_yaml` to ``directory/filename`` and return the path."""
    path = Path(directory) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(task_yaml(run_name))
    return path
