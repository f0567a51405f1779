"""The image built from the shipped Dockerfile, run in a real Docker engine against a real dstack
server: healthy, non-root, read-only, no capabilities, batching, draining under `docker stop`.

The containers use the host's network (only loopback traffic) and an HTTP proxy variable that
leads nowhere: the health check and the proxy must both ignore it."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from harness.bursts import burst
from harness.processes import answers, find_free_port
from harness.runs import create_active_runs
from harness.server import DstackServer

from .conftest import MEASURED
from .engine import Engine, docker

pytestmark = pytest.mark.deploy

PROJECT = "main"
STOP = f"/api/project/{PROJECT}/runs/stop"
DEAD_PROXY = "http://127.0.0.1:9"  # discard port: nothing answers there
GRACE_SECONDS = 10  # docker stop's default


@dataclass
class Container:
    name: str
    url: str
    admin_url: str

    def inspect(self) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(docker("inspect", self.name).stdout)
        return data[0]

    def remove(self) -> None:
        docker("rm", "--force", self.name, check=False)


def run_container(image: str, upstream: str, *env: str, admin_flag: bool = False) -> Container:
    """The image on the host's network. The admin port is set in the environment, or with
    `admin_flag` as a flag to the proxy (the command then replaces the image's CMD)."""
    port, admin_port = find_free_port(), find_free_port()
    name = f"dstack-coalescer-test-{secrets.token_hex(4)}"
    settings = {
        "COALESCER_UPSTREAM": upstream,
        # The policy that sends a burst in the fewest calls (deploy/compose.yaml's and the
        # Kubernetes manifests'); with `adaptive`, the first of a burst leaves alone.
        "COALESCER_POLICY": "window",
        "COALESCER_HOST": "127.0.0.1",
        "COALESCER_PORT": str(port),
        "HTTP_PROXY": DEAD_PROXY,
        "http_proxy": DEAD_PROXY,
    }
    command = ["dstack-coalescer", "--admin-port", str(admin_port)] if admin_flag else []
    if not admin_flag:
        settings["COALESCER_ADMIN_PORT"] = str(admin_port)
    flags = [f"--env={k}={v}" for k, v in settings.items()] + [f"--env={e}" for e in env]
    docker(
        "run", "--detach", "--name", name, "--network", "host",
        "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        *flags, image, *command,
    )  # fmt: skip
    return Container(name, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}")


def wait_for(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def metric(admin_url: str, name: str) -> float:
    with urllib.request.urlopen(f"{admin_url}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} not exported"
    return float(found.group(1))


@pytest.fixture(scope="module")
def dstack_server() -> Iterator[DstackServer]:
    # This module's own: its runs are left active, and it is thrown away after the module.
    with DstackServer(stop_timeout=1.0) as server:
        yield server


@pytest.fixture(scope="module")
def container(coalescer_image: str, dstack_server: DstackServer) -> Iterator[Container]:
    box = run_container(coalescer_image, dstack_server.url, admin_flag=True)
    try:
        # The image's own HEALTHCHECK and timings: the first check runs 10 s after the start.
        wait_for(lambda: box.inspect()["State"]["Health"]["Status"] != "starting", "health")
        yield box
    finally:
        box.remove()


def test_reports_healthy_with_an_http_proxy_variable_and_the_admin_port_as_a_flag(
    container: Container,
) -> None:
    info = container.inspect()
    assert info["State"]["Running"] is True
    assert info["State"]["Health"]["Status"] == "healthy", info["State"]["Health"]["Log"][-3:]
    env = set(info["Config"]["Env"])
    assert {f"HTTP_PROXY={DEAD_PROXY}", f"http_proxy={DEAD_PROXY}"} <= env
    assert not any(e.startswith("COALESCER_ADMIN_PORT=") for e in env)
    assert info["Config"]["Cmd"][:2] == ["dstack-coalescer", "--admin-port"]


def test_runs_as_non_root_with_a_read_only_root_and_no_capabilities(
    container: Container,
) -> None:
    info = container.inspect()
    assert info["Config"]["User"] == "10001:10001"
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert info["HostConfig"]["CapDrop"] == ["ALL"]
    # Seen from inside, on the proxy's own process (PID 1).
    status = docker("exec", container.name, "cat", "/proc/1/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["Uid"].split() == ["10001"] * 4
    assert fields["CapEff"].strip() == fields["CapPrm"].strip() == "0" * 16
    assert fields["NoNewPrivs"].strip() == "1"
    cmdline = docker("exec", container.name, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert cmdline[1].endswith("/dstack-coalescer"), cmdline
    write = docker("exec", container.name, "touch", "/opt/x", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr


def test_only_the_public_port_is_exposed(coalescer_image: str) -> None:
    (info,) = json.loads(docker("image", "inspect", coalescer_image).stdout)
    assert info["Config"]["ExposedPorts"] == {"8080/tcp": {}}


# Wheels, sdists, pip caches, sources and repository files anywhere in an image.
LEFTOVERS = """
import os
for root, dirs, files in os.walk("/"):
    if root.startswith(("/proc", "/sys", "/dev")):
        dirs[:] = []
        continue
    for name in dirs + files:
        path = os.path.join(root, name)
        if name in ("wheelhouse", "wheels", ".git", "Dockerfile", ".dockerignore") \\
                or name.endswith((".whl", ".tar.gz")) or path.endswith("/.cache/pip"):
            print(path)
"""


def test_the_image_holds_no_build_leftovers(coalescer_image: str, engine: Engine) -> None:
    def scan(image: str) -> set[str]:
        found = docker("run", "--rm", "--network", "none", image, "python3", "-c", LEFTOVERS)
        return set(found.stdout.split())

    # Debian's own ensurepip wheels belong to the base, not to the build.
    assert scan(coalescer_image) - scan(engine.base_image) == set()
    for gone in ("/src", "/wheels", "/app", "/root/.cache/pip"):
        assert docker("run", "--rm", coalescer_image, "test", "-e", gone, check=False).returncode
    # The runtime venv has no pip (nothing to install with at run time).
    pip = docker("run", "--rm", coalescer_image, "python", "-m", "pip", "--version", check=False)
    assert pip.returncode != 0 and "No module named pip" in pip.stderr


async def test_batches_a_burst_of_one_run_stops(
    container: Container, dstack_server: DstackServer
) -> None:
    names = [f"image-{i}" for i in range(20)]
    await asyncio.to_thread(create_active_runs, dstack_server, PROJECT, names)
    mark = dstack_server.log_mark()
    bodies = [{"runs_names": [n], "abort": False} for n in names]
    answers = await burst(container.url, STOP, bodies, dstack_server.admin_token)
    assert answers == [(200, b"null")] * 20
    calls = dstack_server.count_requests("/runs/stop", since=mark)
    MEASURED["image: upstream stop calls for 20 one-run stops"] = str(calls)
    assert 1 <= calls <= 2


async def test_docker_stop_drains_callers_and_exits_zero_within_the_grace_period(
    coalescer_image: str, dstack_server: DstackServer
) -> None:
    # A long window holds the burst in the proxy until the SIGTERM of `docker stop` flushes it.
    box = run_container(
        coalescer_image,
        dstack_server.url,
        "COALESCER_WINDOW_MS=5000",
        "COALESCER_MAX_WAIT_MS=35000",  # the least allowed: connect + batch timeouts
    )
    names = [f"drain-{i}" for i in range(10)]
    try:
        await asyncio.to_thread(create_active_runs, dstack_server, PROJECT, names)
        await asyncio.to_thread(
            wait_for, lambda: answers(f"{box.admin_url}/healthz"), "the admin listener"
        )
        mark = dstack_server.log_mark()
        bodies = [{"runs_names": [n], "abort": False} for n in names]
        callers = asyncio.create_task(burst(box.url, STOP, bodies, dstack_server.admin_token))
        await asyncio.to_thread(
            wait_for,
            lambda: metric(box.admin_url, "dstack_coalescer_requests_in_flight") >= len(names),
            "the burst to be held in the proxy",
        )
        assert dstack_server.count_requests("/runs/stop", since=mark) == 0  # still held
        began = time.monotonic()
        stop = await asyncio.to_thread(
            docker, "stop", "--time", str(GRACE_SECONDS), box.name, timeout=60
        )
        took = time.monotonic() - began
        replies = await callers
        MEASURED["docker stop with 10 held stops"] = f"{took:.2f} s (grace {GRACE_SECONDS} s)"
        assert stop.returncode == 0
        state = box.inspect()["State"]
        assert (state["ExitCode"], state["OOMKilled"]) == (0, False), state
        assert replies == [(200, b"null")] * len(names)
        assert 1 <= dstack_server.count_requests("/runs/stop", since=mark) <= 2
        logs = docker("logs", box.name)
        assert "Traceback" not in logs.stdout + logs.stderr
    finally:
        box.remove()
