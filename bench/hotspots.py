"""Where the proxy's pass-through time goes: py-spy samples the proxy (default configuration,
pinned like in passthrough.py) under the same wrk POST load, then the bare aiohttp pass-through,
and the samples are summed by the package of the innermost frame (self time) and by concern
anywhere on the stack (inclusive); with each process's CPU time per request, the shares become
microseconds per request, side by side.

    .venv/bin/python -m bench.hotspots [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from harness import nginx
from harness.processes import Process, ProxyProcess

from .passthrough import LOAD_CPU, SUT_CPU, BarePassthrough
from .tools import cpu_seconds, pin
from .wrk import POST_PATH, POST_SCRIPT, wrk

RATE = 250
PACKAGES = (  # (label, path fragment), first match wins
    ("proxy (this project)", "proxy/"),
    ("aiohttp server (web_*)", "aiohttp/web_"),
    ("aiohttp client (client*, connector)", "aiohttp/client"),
    ("aiohttp client (client*, connector)", "aiohttp/connector.py"),
    ("aiohttp shared (parser, writer, streams, payload)", "aiohttp/"),
    ("asyncio (event loop, sockets)", "asyncio/"),
    ("structlog", "structlog/"),
    ("logging", "logging/"),
    ("prometheus_client", "prometheus_client/"),
    ("multidict / yarl", "multidict/"),
    ("multidict / yarl", "yarl/"),
    ("json", "json/"),
)
CONCERNS = (  # (label, path fragments); a sample counts once per concern it touches
    ("logging (structlog, logging)", ("structlog/", "logging/")),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("header policy (proxy/edge/headers.py)", ("proxy/edge/headers.py",)),
    ("the upstream call (aiohttp client)", ("aiohttp/client", "aiohttp/connector.py")),
)


@dataclass
class ProcessProfile:
    """One process under the profiler: shares of its samples, and its CPU time per request."""

    samples: int
    self: list[tuple[str, float]]  # by package of the innermost frame
    inclusive: list[tuple[str, float]]  # by concern anywhere on the stack (hotspots.CONCERNS)
    proxy_functions: list[tuple[str, float]]  # the proxy's own functions, inclusive
    requests_per_s: float = 0.0
    cpu_us: float = 0.0


@dataclass
class Profile:
    rate: int  # samples per second
    seconds: int
    proxy: ProcessProfile
    bare: ProcessProfile  # the bare aiohttp pass-through


def _frames(stack: str) -> list[str]:
    return [f for f in stack.split(";") if f]


def _in(frame: str, fragment: str) -> bool:
    """Whether the frame's file path starts with, or has a directory named like, `fragment`
    (py-spy shortens paths to the package, e.g. `aiohttp/web_protocol.py`)."""
    return f"({fragment}" in frame or f"/{fragment}" in frame


def _package(frame: str) -> str:
    for label, fragment in PACKAGES:
        if _in(frame, fragment):
            return label
    return "other (interpreter, stdlib)"


def summarise(raw: str) -> ProcessProfile:
    """Shares of samples from py-spy's raw (collapsed) output: self by package, inclusive by
    concern."""
    own: Counter[str] = Counter()
    concern: Counter[str] = Counter()
    functions: Counter[str] = Counter()  # the proxy's own functions, inclusive
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = _frames(stack)
        own[_package(frames[-1])] += n
        for label, fragments in CONCERNS:
            if any(_in(f, frag) for f in frames for frag in fragments):
                concern[label] += n
        for name in {f.split(" (")[0] for f in frames if _in(f, "proxy/") and "__main__" not in f}:
            functions[name] += n
    total = max(total, 1)
    return ProcessProfile(
        samples=total,
        self=[(k, v / total) for k, v in own.most_common()],
        inclusive=[(k, concern[k] / total) for k, _ in CONCERNS],
        proxy_functions=[(k, v / total) for k, v in functions.most_common(8)],
    )


def _profile(
    spy: str, proc: Process, url: str, script: Path, out: Path, seconds: int
) -> ProcessProfile:
    """Sample `proc` under `seconds` of wrk load; the summary plus its CPU time per request."""
    assert proc.pid is not None
    pin(proc.pid, {SUT_CPU})
    wrk(url + POST_PATH, 1, 32, script, LOAD_CPU)  # warm-up
    command = [spy, "record", "-r", str(RATE), "-d", str(seconds), "-f", "raw", "-o", str(out)]
    sampler = subprocess.Popen(
        [*command, "--pid", str(proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    before = cpu_seconds(proc.pid)
    load = wrk(url + POST_PATH, seconds, 32, script, LOAD_CPU)
    used = cpu_seconds(proc.pid) - before
    sampler.wait(timeout=seconds + 30)
    if not out.exists():
        raise RuntimeError("py-spy wrote nothing (ptrace not permitted?)")
    cpu_us = used * 1e6 / max(load.requests, 1)
    return replace(summarise(out.read_text()), requests_per_s=load.requests_per_s, cpu_us=cpu_us)


def run(workdir: Path, seconds: int) -> Profile | None:
    """Profile the proxy, then the bare aiohttp pass-through, under the same load; None (and a
    note) when py-spy is missing or not permitted."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.access(spy, os.X_OK):
        print("py-spy not found (pip install py-spy): not profiled", flush=True)
        return None
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "post.lua"
    script.write_text(POST_SCRIPT)
    profiled: dict[str, ProcessProfile] = {}
    with nginx.fast_upstream(workdir / "upstream") as upstream:
        assert upstream.pid is not None
        pin(upstream.pid, {LOAD_CPU})
        for name in ("proxy", "bare aiohttp"):
            proc: ProxyProcess | BarePassthrough = (
                # On asyncio's loop, like the bare one: py-spy sees whole Python stacks there,
                # and the proxy's own functions cost the same on either loop.
                ProxyProcess(upstream.url, workdir / "proxy.log", "--event-loop", "asyncio")
                if name == "proxy"
                else BarePassthrough(upstream.url, workdir / "bare.log")
            )
            with proc:
                try:
                    profiled[name] = _profile(
                        spy, proc, proc.url, script, workdir / f"{proc.pid}.raw", seconds
                    )
                except RuntimeError as exc:
                    print(f"{exc}: not profiled", flush=True)
                    return None
            print(f"{name}: {profiled[name].cpu_us:.0f} µs of CPU per request", flush=True)
            for label, share in profiled[name].self:
                print(f"{share:6.1%}  {label}", flush=True)
    return Profile(RATE, seconds, profiled["proxy"], profiled["bare aiohttp"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-hotspots-") as tmp:
        profile = run(Path(tmp), args.seconds)
        print(json.dumps(asdict(profile) if profile else None))


if __name__ == "__main__":
    main()
