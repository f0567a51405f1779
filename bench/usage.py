"""What a phase costs the dstack server: CPU seconds and peak resident memory of its process
tree (read from /proc, sampled in a thread), and the errors its log shows."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from harness.server import DstackServer

_TICK = os.sysconf("SC_CLK_TCK")
LOCKED = "database is locked"
_ERROR_LINE = re.compile(r"^(ERROR|CRITICAL)\b|^Traceback |Status: 5\d\d\s*$")


def tree(pid: int) -> list[int]:
    """`pid` and every descendant alive now."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [
                    int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()
                ]
        except OSError:
            continue
    return out


def _cpu(pid: int) -> float:
    """utime + stime of `pid` and of its waited-for children, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / _TICK


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return 0.0


def log_errors(text: str) -> tuple[int, int]:
    """(lines naming "database is locked", other error lines) of a stretch of server log."""
    lines = text.splitlines()
    locked = sum(1 for line in lines if LOCKED in line)
    errors = sum(1 for line in lines if LOCKED not in line and _ERROR_LINE.search(line))
    return locked, errors


@dataclass(frozen=True)
class Usage:
    cpu_s: float  # CPU seconds the server's process tree used during the phase
    peak_rss_mb: float  # the tree's largest summed RSS sampled during the phase
    start_rss_mb: float  # the same at the start of the phase
    locked: int  # log lines with "database is locked"
    errors: int  # other error lines: ERROR/CRITICAL records, tracebacks, 5xx answers


class Sampler:
    """`with Sampler(server) as s: ...` then `s.usage`: the server's cost over the block."""

    def __init__(self, server: DstackServer, every: float = 0.01) -> None:
        if server.pid is None:
            raise RuntimeError("server not running")
        self._server, self._pid, self._every = server, server.pid, every
        self._stop = threading.Event()
        self._peak = 0.0
        self.usage: Usage | None = None

    def _rss(self) -> float:
        return sum(_rss_mb(p) for p in tree(self._pid))

    def _sample(self) -> None:
        while not self._stop.wait(self._every):
            self._peak = max(self._peak, self._rss())

    def __enter__(self) -> Sampler:
        self._mark = self._server.log_mark()
        self._start_rss = self._peak = self._rss()
        self._cpu0 = sum(_cpu(p) for p in tree(self._pid))
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        cpu = sum(_cpu(p) for p in tree(self._pid)) - self._cpu0
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._rss())
        locked, errors = log_errors(self._server.read_log(self._mark))
        self.usage = Usage(cpu, self._peak, self._start_rss, locked, errors)
