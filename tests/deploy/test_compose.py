"""deploy/compose.yaml brought up in a real Docker engine, with its `front` profile (the TLS +
HTTP/2 nginx front of deploy/nginx/): the shipped file, plus an override that substitutes the
locally built images (nothing can be pulled here), a test certificate, and puts every service
on the host's network, on free loopback ports. Upstream calls are counted from the dstack
server container's own DEBUG log.

Published ports cannot go with host networking, and Debian's Compose (v1) cannot reset a list
in an override, so the test brings up the shipped file as `docker-compose config` resolves it,
less its `ports`, plus the override."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from harness.bursts import burst
from harness.processes import find_free_port
from harness.runs import create_active_runs
from harness.server import parse_processed_requests

from .conftest import MEASURED
from .engine import ROOT, compose, docker

pytestmark = pytest.mark.deploy

COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
FRONT_TEMPLATE = ROOT / "deploy" / "nginx" / "dstack-coalescer.conf.template"
PROJECT = "main"
STOP = f"/api/project/{PROJECT}/runs/stop"


@dataclass
class Stack:
    """A running Compose project; satisfies the harness's ServerLike for the dstack server."""

    name: str
    files: list[Path]
    env: dict[str, str]
    url: str  # the dstack server, directly
    admin_token: str
    proxy_url: str
    front_url: str
    front_port: int
    certificate: Path

    def compose(self, *args: str, timeout: float = 600, front: bool = True) -> str:
        """Compose on this project; with `front`, its `front` profile is in play too."""
        flags = ["--project-name", self.name, *(["--profile", "front"] if front else [])]
        for file in self.files:
            flags += ["--file", str(file)]
        return compose(*flags, *args, timeout=timeout, env=self.env).stdout

    def container(self, service: str) -> str:
        return self.compose("ps", "--quiet", service).strip()

    def stop_calls(self) -> int:
        logs = docker("logs", self.container("dstack-server"))
        requests = parse_processed_requests(logs.stdout + logs.stderr)
        return sum(r.method == "POST" and r.path.endswith("/runs/stop") for r in requests)

    def health(self, service: str) -> str:
        state = docker("inspect", "--format", "{{.State.Health.Status}}", self.container(service))
        return state.stdout.strip()


def override(images: dict[str, str], ports: dict[str, int], tls: Path) -> dict[str, Any]:
    dstack = f"http://127.0.0.1:{ports['dstack']}"
    return {
        "version": "3.9",
        "services": {
            "dstack-server": {
                "image": images["dstack"],
                "network_mode": "host",
                "environment": {
                    "DSTACK_SERVER_HOST": "127.0.0.1",
                    "DSTACK_SERVER_PORT": str(ports["dstack"]),
                    "DSTACK_SERVER_LOG_LEVEL": "DEBUG",
                    "DSTACK_SERVER_LOG_FORMAT": "standard",
                },
            },
            "dstack-coalescer": {
                "image": images["coalescer"],
                "network_mode": "host",
                "environment": {
                    "COALESCER_UPSTREAM": dstack,
                    "COALESCER_HOST": "127.0.0.1",
                    "COALESCER_PORT": str(ports["proxy"]),
                    "COALESCER_ADMIN_PORT": str(ports["admin"]),
                },
            },
            "front": {
                "image": images["nginx"],
                "network_mode": "host",
                "environment": {
                    "FRONT_LISTEN": f"127.0.0.1:{ports['front']}",
                    "FRONT_COALESCER_SERVERS": f"server 127.0.0.1:{ports['proxy']};",
                    "FRONT_DSTACK_SERVER": f"127.0.0.1:{ports['dstack']}",
                    "FRONT_PUBLIC_PORT": str(ports["front"]),
                },
                "volumes": [f"{tls}:/etc/nginx/tls:ro"],
            },
        },
    }


def make_certificate(directory: Path) -> Path:
    """A self-signed certificate for 127.0.0.1, as the shipped file expects: tls.crt, tls.key."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(directory / "tls.key"), "-out", str(directory / "tls.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    # As docs/deploy.md says: the front runs as uid 101, which must read the key (kept 0600).
    os.chown(directory / "tls.key", 101, 101)
    return directory / "tls.crt"


def shipped(token: str = "t") -> dict[str, Any]:
    """The shipped file as Compose resolves it (absolute paths, variables filled in)."""
    config = compose(
        "--file", str(COMPOSE_FILE), "config", env={"DSTACK_SERVER_ADMIN_TOKEN": token}
    )
    loaded: dict[str, Any] = yaml.safe_load(config.stdout)
    return loaded


def test_the_shipped_file_wires_health_and_hardening(engine: Any) -> None:
    services = shipped()["services"]
    proxy, dstack = services["dstack-coalescer"], services["dstack-server"]
    assert proxy["build"]["context"] == str(ROOT)
    assert proxy["depends_on"] == {"dstack-server": {"condition": "service_healthy"}}
    assert proxy["environment"]["COALESCER_UPSTREAM"] == "http://dstack-server:3000"
    assert proxy["environment"]["COALESCER_POLICY"] == "window"
    assert proxy["healthcheck"]["test"] == ["CMD", "python", "-m", "proxy.health"]
    assert (proxy["read_only"], proxy["cap_drop"]) == (True, ["ALL"])
    assert dstack["image"].startswith("dstackai/dstack:")
    assert dstack["volumes"][0].endswith(":/root/.dstack/server:rw")
    assert "network_mode" not in proxy and "network_mode" not in dstack  # normal networks
    assert services["front"]["profiles"] == ["front"]
    assert services["front"]["depends_on"]["dstack-coalescer"] == {"condition": "service_healthy"}
    # The ring shares the front's network and reaches both upstreams by name through Docker's
    # DNS; the front reaches the ring on loopback.
    ring, front = services["ring"], services["front"]
    assert ring["network_mode"] == "service:front" and ring["profiles"] == ["front"]
    assert ring["environment"]["RING_SERVICE"] == "dstack-coalescer:8080"
    assert ring["environment"]["RING_DSTACK_SERVER"] == "dstack-server:3000"
    assert front["environment"]["FRONT_COALESCER_SERVERS"] == (
        f"server {ring['environment']['RING_LISTEN']};"
    )
    assert front["environment"]["FRONT_DSTACK_SERVER"] == ring["environment"]["RING_DSTACK_LISTEN"]
    assert proxy["environment"]["COALESCER_ADMIN_HOST"] == "0.0.0.0"  # the ring's checks
    missing = compose("--file", str(COMPOSE_FILE), "config", check=False, env={})
    assert missing.returncode != 0 and "set DSTACK_SERVER_ADMIN_TOKEN" in missing.stderr


@pytest.fixture(scope="module")
def stack(
    engine: Any,
    dstack_image: str,
    coalescer_image: str,
    nginx_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    ports = {name: find_free_port() for name in ("dstack", "proxy", "admin", "front")}
    images = {"dstack": dstack_image, "coalescer": coalescer_image, "nginx": nginx_image}
    token = secrets.token_hex(16)
    folder = tmp_path_factory.mktemp("compose")
    certificate = make_certificate(folder / "tls")
    base = shipped(token)
    for service in base["services"].values():
        service.pop("ports", None)
    (folder / "compose.yaml").write_text(yaml.safe_dump(base))
    extra = folder / "compose.override.yaml"
    extra.write_text(yaml.safe_dump(override(images, ports, certificate.parent)))
    stack = Stack(
        name=f"dcx-test-{secrets.token_hex(4)}",
        files=[folder / "compose.yaml", extra],
        env={"DSTACK_SERVER_ADMIN_TOKEN": token},
        url=f"http://127.0.0.1:{ports['dstack']}",
        front_port=ports["front"],
        admin_token=token,
        proxy_url=f"http://127.0.0.1:{ports['proxy']}",
        front_url=f"https://127.0.0.1:{ports['front']}",
        certificate=certificate,
    )
    began = time.monotonic()
    try:
        # `up` returns once dstack-coalescer has started, which waits for a healthy server.
        # The front comes later, in its own test.
        stack.compose("up", "--detach", "--no-build", front=False)
        deadline = time.monotonic() + 120
        while stack.health("dstack-coalescer") != "healthy":
            assert time.monotonic() < deadline, stack.compose("logs", "--tail", "40")
            time.sleep(0.5)
        MEASURED["compose up until healthy"] = f"{time.monotonic() - began:.1f} s"
        yield stack
    finally:
        # Thrown away: no need to wait for the server's own graceful shutdown.
        stack.compose("kill", timeout=120)
        stack.compose("down", "--volumes", "--timeout", "0", timeout=120)


def test_the_proxy_starts_after_a_healthy_server_and_becomes_healthy(stack: Stack) -> None:
    assert stack.health("dstack-server") == "healthy"
    assert stack.health("dstack-coalescer") == "healthy"
    server = docker("inspect", "--format", "{{.State.StartedAt}}", stack.container("dstack-server"))
    proxy = docker(
        "inspect", "--format", "{{.State.StartedAt}}", stack.container("dstack-coalescer")
    )
    assert server.stdout < proxy.stdout  # same RFC 3339 format: ordered as text


async def test_twenty_concurrent_one_run_stops_reach_dstack_as_at_most_two_calls(
    stack: Stack,
) -> None:
    names = [f"compose-{i}" for i in range(20)]
    await asyncio.to_thread(create_active_runs, stack, PROJECT, names)
    before = await asyncio.to_thread(stack.stop_calls)
    bodies = [{"runs_names": [n], "abort": False} for n in names]
    answers = await burst(stack.proxy_url, STOP, bodies, stack.admin_token)
    assert answers == [(200, b"null")] * 20
    calls = await asyncio.to_thread(_settled, stack.stop_calls)
    MEASURED["compose: upstream stop calls for 20 one-run stops"] = str(calls - before)
    assert 1 <= calls - before <= 2
    # Pass-through works too: the same user, asked directly and through the proxy.
    me = "/api/users/get_my_user"
    (direct,) = await burst(stack.url, me, [{}], stack.admin_token)
    (proxied,) = await burst(stack.proxy_url, me, [{}], stack.admin_token)
    assert direct[0] == proxied[0] == 200
    assert orjson.loads(proxied[1])["username"] == orjson.loads(direct[1])["username"] == "admin"


def _wait_for_port(port: int, stack: Stack, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, stack.compose("logs", "--tail", "40", "front")
        time.sleep(0.2)


def _settled(count: Any, quiet: float = 1.0) -> int:
    """A count from container logs, once it has stopped changing (docker relays them late)."""
    last = count()
    while True:
        time.sleep(quiet)
        now = count()
        if now == last:
            return int(now)
        last = now


async def test_twenty_concurrent_stops_over_one_http2_connection_through_the_front(
    stack: Stack,
) -> None:
    # Docker would create a missing bind-mount source as a directory in the checkout.
    assert FRONT_TEMPLATE.is_file(), f"the front's configuration is missing: {FRONT_TEMPLATE}"
    # The front profile, started after a healthy proxy (its depends_on).
    await asyncio.to_thread(stack.compose, "up", "--detach", "--no-build", "front")
    await asyncio.to_thread(_wait_for_port, stack.front_port, stack)
    names = [f"front-{i}" for i in range(20)]
    await asyncio.to_thread(create_active_runs, stack, PROJECT, names)
    before = await asyncio.to_thread(stack.stop_calls)
    tls = ssl.create_default_context(cafile=str(stack.certificate))
    headers = {"Authorization": f"Bearer {stack.admin_token}"}
    async with httpx.AsyncClient(
        http2=True, verify=tls, headers=headers, base_url=stack.front_url, timeout=30
    ) as client:
        answers = await asyncio.gather(
            *(client.post(STOP, json={"runs_names": [n], "abort": False}) for n in names)
        )
        me = await client.post("/api/users/get_my_user", json={})  # straight to dstack
    assert {(a.http_version, a.status_code, a.content) for a in answers} == {
        ("HTTP/2", 200, b"null")
    }
    assert (me.http_version, me.status_code, me.json()["username"]) == ("HTTP/2", 200, "admin")
    calls = await asyncio.to_thread(_settled, stack.stop_calls)
    MEASURED["compose front (HTTP/2): upstream stop calls for 20 one-run stops"] = str(
        calls - before
    )
    assert 1 <= calls - before <= 2
