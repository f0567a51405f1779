"""The image's health command (the Dockerfile's HEALTHCHECK CMD, run here with this Python)
against the proxy's real admin listener: it ignores HTTP proxy variables in both directions
(a dead proxy does not make it fail, a proxy that answers 200 to anything does not make it
pass), and finds the admin port wherever the proxy would: environment, config file or flag."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from harness.processes import ProxyProcess
from proxy.health import healthz_url

ROOT = Path(__file__).resolve().parents[2]
DEAD_PROXY = "http://127.0.0.1:9"  # discard port: nothing answers there
PROXY_VARS = ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy")


def health_command() -> list[str]:
    found = re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])\n", (ROOT / "Dockerfile").read_text())
    assert found is not None
    command: list[str] = json.loads(found.group(1))
    assert command[0] == "python"
    return [sys.executable, *command[1:]]  # the image's `python`


def run_check(env: Mapping[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    base = {k: v for k, v in base.items() if not k.startswith("COALESCER_")}
    return subprocess.run(
        [*health_command(), *flags],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


@pytest.fixture
def proxy_process(tmp_path: Path) -> Iterator[ProxyProcess]:
    # /healthz is liveness only: no upstream is needed.
    with ProxyProcess("http://127.0.0.1:9", tmp_path / "proxy.log") as proxy:
        yield proxy


@pytest.fixture
async def lying_proxy(aiohttp_server: AiohttpServer) -> AsyncIterator[list[str]]:
    """An HTTP proxy that answers 200 to anything; yields the URLs it was asked for."""
    asked: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        asked.append(str(request.url))
        return web.Response(text="fine")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    server = await aiohttp_server(app)
    asked.append(f"http://127.0.0.1:{server.port}")  # the first entry: its own address
    yield asked


async def test_passes_with_a_dead_http_proxy_in_the_environment(
    proxy_process: ProxyProcess,
) -> None:
    env = {
        "COALESCER_ADMIN_PORT": str(proxy_process.admin_port),
        "HTTP_PROXY": DEAD_PROXY,
        "http_proxy": DEAD_PROXY,
        "ALL_PROXY": DEAD_PROXY,
    }
    done = await asyncio.to_thread(run_check, env)
    assert (done.returncode, done.stderr) == (0, "")


async def test_fails_when_the_proxy_is_down_even_if_an_http_proxy_answers_200(
    proxy_process: ProxyProcess, lying_proxy: list[str]
) -> None:
    env = {
        "COALESCER_ADMIN_PORT": str(proxy_process.admin_port),
        "HTTP_PROXY": lying_proxy[0],
        "http_proxy": lying_proxy[0],
    }
    assert (await asyncio.to_thread(run_check, env)).returncode == 0
    await asyncio.to_thread(proxy_process.stop)
    done = await asyncio.to_thread(run_check, env)
    assert done.returncode == 1
    assert f"127.0.0.1:{proxy_process.admin_port}/healthz did not answer 200" in done.stderr
    assert lying_proxy[1:] == []  # never asked


async def test_follows_the_admin_port_from_the_config_file(
    proxy_process: ProxyProcess, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"admin_port: {proxy_process.admin_port}\n")
    env = {"COALESCER_CONFIG": str(config), "HTTP_PROXY": DEAD_PROXY}
    assert (await asyncio.to_thread(run_check, env)).returncode == 0
    config.write_text(f"admin_port: {proxy_process.port}\n")  # the public port has no /healthz
    assert (await asyncio.to_thread(run_check, env)).returncode == 1


async def test_follows_the_admin_port_from_a_flag_and_the_environment_over_the_file(
    proxy_process: ProxyProcess, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"admin_port: {proxy_process.port}\n")
    env = {"COALESCER_CONFIG": str(config)}
    admin = str(proxy_process.admin_port)
    assert (await asyncio.to_thread(run_check, env, "--admin-port", admin)).returncode == 0
    assert (
        await asyncio.to_thread(run_check, {**env, "COALESCER_ADMIN_PORT": admin})
    ).returncode == 0
    assert (await asyncio.to_thread(run_check, env)).returncode == 1


async def test_a_bad_configuration_is_reported_not_taken_for_unhealthy() -> None:
    done = await asyncio.to_thread(run_check, {"COALESCER_ADMIN_PORT": "ninety"})
    assert done.returncode == 2
    assert "invalid admin_port from environment COALESCER_ADMIN_PORT: 'ninety'" in done.stderr


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:9090/healthz"),
        ("0.0.0.0", "http://127.0.0.1:9090/healthz"),
        ("::", "http://[::1]:9090/healthz"),
        ("::1", "http://[::1]:9090/healthz"),
        ("10.1.2.3", "http://10.1.2.3:9090/healthz"),
        ("localhost", "http://localhost:9090/healthz"),
    ],
)
def test_the_checked_url_reaches_the_admin_listener_from_inside(host: str, url: str) -> None:
    assert healthz_url(host, 9090) == url
