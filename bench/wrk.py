"""Running wrk (one thread, pinned to a core) and reading its summary."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# A small JSON POST, like the dstack API's calls; passed through (not a batchable path).
POST_SCRIPT = """wrk.method = "POST"
wrk.body = '{"project_name": "main", "only_active": false, "limit": 10}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench"
"""
POST_PATH = "/api/runs/list"

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    requests: int
    p50_ms: float
    p99_ms: float


def wrk_executable() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk not found: apt-get install nginx wrk (or run `make bench` as root)")
    return found


def _ms(text: str, quantile: str) -> float:
    m = re.search(rf"^\s+{quantile}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def wrk(
    url: str,
    seconds: int,
    connections: int,
    script: Path | None = None,
    cpu: int | None = None,
) -> WrkResult:
    """`wrk -t1 -c<connections> --latency` for `seconds` (pinned to `cpu` with taskset)."""
    args = [wrk_executable(), "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script is not None:
        args += ["-s", str(script)]
    if cpu is not None:
        args = ["taskset", "-c", str(cpu), *args]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    return parse(out, url)


def parse(out: str, url: str = "") -> WrkResult:
    """Requests/s, p50 and p99 (ms) from wrk's `--latency` summary.

    Raises:
        RuntimeError: wrk saw a non-2xx answer or a socket error (the figure would lie).
    """
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"errors under load at {url}:\n{out}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{out}")
    count = re.search(r"(\d+) requests in", out)
    return WrkResult(
        float(rps.group(1)), int(count.group(1)) if count else 0, _ms(out, "50"), _ms(out, "99")
    )
