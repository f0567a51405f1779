"""deploy/compose.yaml's front profile as shipped, on Compose's own network (not the host's):
nginx and the ring (HAProxy) reach the proxy and dstack by service name through Docker's DNS.
The proxy's container is recreated at a new address; the 20 stops sent after it is healthy
again are all answered by dstack, none with a 502 (nginx alone resolved the name once, at start,
and answered 502 until it was restarted).

The front's images are the shipped ones (deploy/nginx/ and deploy/haproxy/ Dockerfiles: Debian
13's nginx 1.26 with `http2 on;`, and HAProxy 3.0), built by conftest.py on a debootstrap
trixie, since nothing can be pulled here. The client reaches the front at its container's
address on the project's bridge network, on the port the container listens on (8443)."""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import yaml

from .conftest import MEASURED
from .engine import docker
from .test_compose import Stack, make_certificate, shipped

pytestmark = pytest.mark.deploy

PROJECT = "main"
STOP = f"/api/project/{PROJECT}/runs/stop"


def address(container: str) -> str:
    data = json.loads(docker("inspect", container).stdout)[0]
    (network,) = data["NetworkSettings"]["Networks"].values()
    return str(network["IPAddress"])


def wait_for(predicate: Any, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def stack(
    engine: Any,
    dstack_image: str,
    coalescer_image: str,
    nginx_image: str,
    haproxy_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    token = secrets.token_hex(16)
    folder = tmp_path_factory.mktemp("compose-ring")
    certificate = make_certificate(folder / "tls")
    base = shipped(token)
    for service in base["services"].values():
        service.pop("ports", None)  # the client reaches the containers on their network
    (folder / "compose.yaml").write_text(yaml.safe_dump(base))
    extra = folder / "compose.override.yaml"
    extra.write_text(
        yaml.safe_dump(
            {
                "version": "3.9",
                "services": {
                    "dstack-server": {"image": dstack_image},
                    "dstack-coalescer": {"image": coalescer_image},
                    "front": {
                        "image": nginx_image,
                        "volumes": [f"{certificate.parent}:/etc/nginx/tls:ro"],
                    },
                    "ring": {"image": haproxy_image},
                },
            }
        )
    )
    stack = Stack(
        name=f"dcx-ring-{secrets.token_hex(4)}",
        files=[folder / "compose.yaml", extra],
        env={"DSTACK_SERVER_ADMIN_TOKEN": token},
        url="",
        admin_token=token,
        proxy_url="",
        front_url="",
        front_port=8443,
        certificate=certificate,
    )
    try:
        stack.compose("up", "--detach", "--no-build")
        wait_for(lambda: stack.health("dstack-coalescer") == "healthy", "a healthy proxy")
        stack.url = f"http://{address(stack.container('dstack-server'))}:3000"
        stack.front_url = f"https://{address(stack.container('front'))}:8443"
        yield stack
    finally:
        stack.compose("kill", timeout=120)
        stack.compose("down", "--volumes", "--timeout", "0", timeout=120)


async def twenty_stops(stack: Stack) -> list[tuple[int, bytes]]:
    tls = ssl.create_default_context(cafile=str(stack.certificate))
    tls.check_hostname = False  # the certificate names 127.0.0.1; the front is on its network
    headers = {"Authorization": f"Bearer {stack.admin_token}"}
    async with httpx.AsyncClient(
        http2=True, verify=tls, headers=headers, base_url=stack.front_url, timeout=60
    ) as client:
        answers = await asyncio.gather(
            *(
                client.post(STOP, json={"runs_names": [f"missing-{i}"], "abort": False})
                for i in range(20)
            )
        )
    return [(a.status_code, a.content) for a in answers]


async def test_the_front_follows_a_recreated_proxy_container(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=30) as plain:
        direct = await plain.post(
            stack.url + STOP,
            content=orjson.dumps({"runs_names": ["missing-x"], "abort": False}),
            headers={
                "Authorization": f"Bearer {stack.admin_token}",
                "Content-Type": "application/json",
            },
        )
    expected = (direct.status_code, direct.content)  # dstack's own answer for an unknown run
    assert direct.status_code < 500, expected

    # The ring has found the proxy (it resolves every second): then every stop gets dstack's
    # answer.
    deadline = time.monotonic() + 30
    while (first := await twenty_stops(stack)) != [expected] * 20:
        assert time.monotonic() < deadline, Counter(first)
        await asyncio.sleep(1)

    # Recreate the proxy's container at a new address: a squatter takes the freed one first.
    before = address(stack.container("dstack-coalescer"))
    await asyncio.to_thread(stack.compose, "rm", "--stop", "--force", "dstack-coalescer")
    network = next(
        iter(
            json.loads(docker("inspect", stack.container("front")).stdout)[0]["NetworkSettings"][
                "Networks"
            ]
        )
    )
    squatter = f"{stack.name}-squatter"
    docker("run", "--detach", "--rm", "--name", squatter, "--network", network,
           "--entrypoint", "sleep", stack_image(stack, "front"), "600")  # fmt: skip
    try:
        await asyncio.to_thread(stack.compose, "up", "--detach", "--no-build", "dstack-coalescer")
        await asyncio.to_thread(
            wait_for, lambda: stack.health("dstack-coalescer") == "healthy", "the new proxy"
        )
    finally:
        docker("rm", "--force", squatter, check=False)
    after = address(stack.container("dstack-coalescer"))
    assert after != before

    answers = await twenty_stops(stack)
    MEASURED["compose ring: 20 stops after the proxy was recreated"] = str(Counter(answers))
    assert answers == [expected] * 20


def stack_image(stack: Stack, service: str) -> str:
    found = docker("inspect", "--format", "{{.Config.Image}}", stack.container(service))
    return found.stdout.strip()
