"""A real Docker engine for the deploy tests: set up by `setup_docker.sh`, driven through the
`docker` and `docker-compose` command lines. Docker Hub cannot be reached, so images are built
on stand-in bases from debootstrap (Debian bookworm for the proxy, trixie for the front's nginx
and HAProxy) and Python packages come from a wheelhouse built on the host with pip and the
project's constraints."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import signal
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SETUP = HERE / "setup_docker.sh"
DSTACK_REQUIREMENT = "dstack[server]==0.22.5"
COALESCER_IMAGE = "dstack-coalescer:test"
DSTACK_IMAGE = "dstack-coalescer-test-dstack:0.22.5"
# The front's images, from the shipped deploy/nginx/ and deploy/haproxy/ Dockerfiles.
NGINX_IMAGE = "dstack-front-nginx:test"
HAPROXY_IMAGE = "dstack-front-ring:test"
# A fixed port when free, so that the build argument naming it, and so docker's layer cache,
# stay the same from one run to the next.
WHEELHOUSE_PORT = 38941


MEASURED: dict[str, str] = {}
"""Figures the tests measured, printed at the end of the run (tests/deploy/conftest.py)."""


class EngineError(RuntimeError):
    """No Docker engine could be set up; the message says why."""


def cache_dir() -> Path:
    """The same directory as setup_docker.sh: wheelhouse, dockerd data root and logs."""
    if "DSTACK_COALESCER_CACHE" in os.environ:
        return Path(os.environ["DSTACK_COALESCER_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "dstack-coalescer"


@dataclass
class Engine:
    base_image: str
    front_base_image: str
    started_pid: int | None  # set when the setup started dockerd: stopped by `stop`
    setup_seconds: float

    def stop(self, timeout: float = 30.0) -> None:
        if self.started_pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.started_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{self.started_pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)


def start_engine() -> Engine:
    """Run setup_docker.sh (install, start dockerd, stand-in base images)."""
    began = time.monotonic()
    try:
        done = subprocess.run(
            ["bash", str(SETUP)],
            capture_output=True,
            text=True,
            timeout=1200,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(f"{SETUP.name} did not finish: {exc}") from exc
    if done.returncode != 0:
        raise EngineError(f"{SETUP.name} exited {done.returncode}:\n{done.stderr[-3000:]}")
    fields = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    pid = fields.get("started-dockerd")
    return Engine(
        fields["base-image"],
        fields["front-base-image"],
        int(pid) if pid else None,
        time.monotonic() - began,
    )


def docker(
    *args: str, timeout: float = 600, check: bool = True, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`docker ARGS`; on failure the error carries the command's output."""
    return _run(["docker", *args], timeout, check, env)


def compose(
    *args: str, timeout: float = 600, check: bool = True, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return _run(["docker-compose", *args], timeout, check, env)


def _run(
    cmd: list[str], timeout: float, check: bool, env: Mapping[str, str] | None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=full_env, stdin=subprocess.DEVNULL
    )
    if check and done.returncode != 0:
        output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}\n{output}")
    return done


def coalescer_requirements() -> list[str]:
    """What `pip install .` of the project needs: its build backend and runtime dependencies."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [*meta["build-system"]["requires"], *meta["project"]["dependencies"]]


def build_wheelhouse(python: str, requirements: Sequence[str]) -> Path:
    """Wheels for `requirements` under the project's constraints, built once per set."""
    constraints = (ROOT / "constraints.txt").read_bytes()
    key = hashlib.sha256(constraints + "\n".join(sorted(requirements)).encode()).hexdigest()[:12]
    target = cache_dir() / f"wheelhouse-{key}"
    if (target / ".complete").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    _run(
        [python, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--constraint", str(ROOT / "constraints.txt"), "--wheel-dir", str(target),
         *requirements],
        timeout=900, check=True, env=None,
    )  # fmt: skip
    (target / ".complete").touch()
    return target


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve `directory` over HTTP on loopback (pip's --find-links reads the listing)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", WHEELHOUSE_PORT), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def build_image(
    tag: str, context: Path, dockerfile: Path | None = None, args: Mapping[str, str] | None = None
) -> None:
    """`docker build` with host networking (to reach a loopback wheelhouse)."""
    cmd = ["build", "--network", "host", "--tag", tag]
    if dockerfile is not None:
        cmd += ["--file", str(dockerfile)]
    for name, value in (args or {}).items():
        cmd += ["--build-arg", f"{name}={value}"]
    docker(*cmd, str(context), timeout=1200)


def image_size(tag: str) -> int:
    return int(docker("image", "inspect", "--format", "{{.Size}}", tag).stdout)


def image_version(tag: str, *command: str) -> str:
    """The first line a version command prints in the image (nginx writes it to stderr)."""
    done = docker("run", "--rm", "--entrypoint", command[0], tag, *command[1:])
    return (done.stdout + done.stderr).strip().splitlines()[0]
