"""The one way tests, benchmarks and the demo start and stop a child process: its own process
group and log file, ready when a URL answers 200, stopped with SIGTERM and then SIGKILL.

The proxy itself (the real console entry point), a minimal fast upstream and the dstack server
(`server.py`) are all started through `Process`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self


class ProcessStartError(RuntimeError):
    """The process exited, or did not answer its ready URL in time; the message ends with the
    tail of its log."""


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def answers(url: str, timeout: float = 2) -> bool:
    """Whether `url` answers a GET with 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Process:
    """A child process with a log file, in its own process group.

    `start` returns once `ready_url` answers 200; `stop` sends SIGTERM to the group, waits
    `grace` seconds, then SIGKILLs it. Both are idempotent; a process still running when the
    interpreter exits is stopped then.
    """

    def __init__(
        self,
        args: Sequence[str],
        ready_url: str,
        log: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        grace: float = 15.0,
        startup_timeout: float = 30.0,
    ) -> None:
        self.args, self.ready_url, self.log = list(args), ready_url, log
        self.env = dict(env) if env is not None else {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.cwd, self.grace, self.startup_timeout = cwd, grace, startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    def start(self) -> Self:
        if self.proc is not None:
            raise RuntimeError("already started")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: terminal signals stay away
            )
        atexit.register(self.stop)
        deadline = started + self.startup_timeout
        while not answers(self.ready_url, timeout=1):
            if (code := self.proc.poll()) is not None:
                self.proc = None
                atexit.unregister(self.stop)
                raise ProcessStartError(f"{self.args[0]} exited {code}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise ProcessStartError(
                    f"{self.ready_url} did not answer in {self.startup_timeout:.0f} s:\n{tail}"
                )
            time.sleep(0.05)
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> int | None:
        """SIGTERM the group, SIGKILL it after `grace` s; the exit code (None if never run)."""
        proc, self.proc = self.proc, None
        atexit.unregister(self.stop)
        if proc is None:
            return None
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=self.grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)
        return proc.returncode

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


class ProxyProcess(Process):
    """`python -m proxy` in front of `upstream`, on free loopback ports."""

    def __init__(self, upstream: str, log: Path, *extra: str) -> None:
        self.port, self.admin_port = find_free_port(), find_free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        super().__init__(
            [
                sys.executable,
                "-m",
                "proxy",
                "--upstream",
                upstream,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--admin-port",
                str(self.admin_port),
                *extra,
            ],
            f"{self.admin_url}/healthz",
            log,
        )


class FastUpstream(Process):
    """A tiny aiohttp app answering `null` to anything (`fast_upstream.py`): what the proxy
    itself costs per request, isolated."""

    def __init__(self, log: Path) -> None:
        self.port = find_free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [sys.executable, "-m", "harness.fast_upstream", str(self.port)],
            f"{self.url}/healthcheck",
            log,
        )


class SlowUpstream(Process):
    """The recording upstream of `slow_upstream.py`: runs/* calls answered after `delay` s,
    or held until released; for load and soak runs against the proxy as its own process."""

    def __init__(self, log: Path, delay: float = 0.0) -> None:
        self.port = find_free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [sys.executable, "-m", "harness.slow_upstream", str(self.port), str(delay)],
            f"{self.url}/healthcheck",
            log,
        )


def proc_status(pid: int) -> dict[str, int]:
    """From /proc: resident and peak memory (`VmRSS`, `VmHWM`, in KiB), `Threads`, and `fds`
    (open file descriptors, sockets included)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "Threads"):
            fields[name] = int(value.split()[0])
    fields["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return fields
