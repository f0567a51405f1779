"""Processes the e2e tests, benchmarks and demo run side by side: the proxy itself (the real
console entry point, in its own process) and a minimal fast upstream."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from .dstack_harness import find_free_port


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


class Background:
    """A child process with a log file, stopped with SIGTERM on exit."""

    def __init__(self, args: list[str], ready_url: str, log: Path) -> None:
        self.args, self.ready_url, self.log = args, ready_url, log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Background:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        _wait_http(self.ready_url, self.proc, self.log)
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class ProxyProcess(Background):
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


class FastUpstream(Background):
    """A tiny aiohttp app answering `null` to anything: the proxy's own cost, isolated."""

    def __init__(self, log: Path) -> None:
        self.port = find_free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [sys.executable, "-m", "bench.fast_upstream", str(self.port)],
            f"{self.url}/healthcheck",
            log,
        )
