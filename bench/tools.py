"""Small helpers every benchmark shares: percentiles, CPU pinning, the machine's description,
the proxy's own metrics, and what the proxy's command line supports."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pct(samples: list[float], q: float) -> float:
    """The q-th percentile (0 < q < 100) of `samples`, inclusive method."""
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[round(q) - 1]


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of process `pid` to `cpus` (threads started later inherit it)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(task), cpus)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time `pid` has used so far, every thread included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of `pid` in MB (10^6 bytes): the peak resident set so far and now."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0]) * 1024 / 1e6  # kB (KiB)
    return fields["VmHWM"], fields["VmRSS"]


@dataclass
class Machine:
    """Date, cores, CPU, versions and git commit: the header of every table."""

    date: str
    cores: str
    cpu: str
    kernel: str
    python: str
    aiohttp: str
    dstack: str
    commit: str
    load: str  # the load averages at the start
    load_at_end: str = ""


def machine() -> Machine:
    """Date, cores, CPU, versions and git commit: the header of every table."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty", "--abbrev=12"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.strip()
    return Machine(
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        cores=str(os.cpu_count()),
        cpu=cpu,
        kernel=platform.release(),
        python=platform.python_version(),
        aiohttp=metadata.version("aiohttp"),
        dstack=metadata.version("dstack"),
        commit=commit or "unknown",
        load=load(),
    )


def load() -> str:
    """The 1-, 5- and 15-minute load averages: how busy the shared machine was."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())
