"""The proxy as it runs in production: its own process (`python -m proxy`), both listeners,
JSON logs, and SIGTERM draining, in front of the recording fake upstream."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.processes import ProxyProcess

from .fakes import FakeUpstream

SECRET = "very-secret-token"


@pytest.fixture
async def proxy_process(upstream_server: Any, tmp_path: Path) -> AsyncIterator[ProxyProcess]:
    proxy = ProxyProcess(
        f"http://localhost:{upstream_server.port}",
        tmp_path / "proxy.log",
        "--policy",
        "window",
        "--window-ms",
        "2000",
        "--max-wait-ms",
        "5000",
        "--batch-timeout",
        "4",
        "--connect-timeout",
        "1",
        "--drain-seconds",
        "5",
    )
    await asyncio.to_thread(proxy.__enter__)
    yield proxy
    await asyncio.to_thread(proxy.stop)


async def test_sigterm_drains_in_flight_requests_and_flushes_open_batches(
    proxy_process: ProxyProcess, fake: FakeUpstream
) -> None:
    fake.gate = asyncio.Event()  # hold runs/* calls upstream until released
    headers = {"Authorization": "Bearer member"}
    async with aiohttp.ClientSession() as session:

        async def stop(name: str) -> tuple[int, str]:
            async with session.post(
                proxy_process.url + "/api/project/main/runs/stop",
                json={"runs_names": [name], "abort": False},
                headers=headers,
            ) as resp:
                return resp.status, await resp.text()

        callers = asyncio.gather(stop("a"), stop("b"))
        await asyncio.sleep(0.3)  # inside the 2 s window: nothing sent yet
        assert fake.runs_calls() == []
        assert proxy_process.proc is not None
        proxy_process.proc.send_signal(signal.SIGTERM)
        while not fake.runs_calls():  # the window is flushed at once, not after 2 s
            await asyncio.sleep(0.02)
        fake.gate.set()
        assert await asyncio.wait_for(callers, 5) == [(200, "null"), (200, "null")]
    assert await asyncio.to_thread(proxy_process.proc.wait, 10) == 0
    (call,) = fake.runs_calls()
    assert call.json == {"runs_names": ["a", "b"], "abort": False}


async def test_admin_listener_reports_health_readiness_and_metrics(
    proxy_process: ProxyProcess, upstream_server: Any
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy_process.admin_url + "/healthz") as resp:
            assert resp.status == 200
        async with session.get(proxy_process.admin_url + "/readyz") as resp:
            assert resp.status == 200
        async with session.post(proxy_process.url + "/api/anything", json={}) as resp:
            assert resp.status == 200
        async with session.get(proxy_process.admin_url + "/metrics") as resp:
            text = await resp.text()
            assert resp.headers["Content-Type"].startswith("text/plain")
        assert 'dstack_coalescer_requests_total{route="api",status="200"} 1.0' in text
        assert "dstack_coalescer_upstream_latency_seconds_bucket" in text
        assert "dstack_coalescer_requests_in_flight" in text
        assert 'dstack_coalescer_request_duration_seconds_count{route="passthrough"} 1.0' in text
        assert "dstack_coalescer_upstream_healthy 1.0" in text
        assert "process_resident_memory_bytes" in text
        # dstack's own /metrics on the public port is the upstream's, not the proxy's
        async with session.get(proxy_process.url + "/metrics") as resp:
            assert "dstack_coalescer_requests_total" not in await resp.text()
        await upstream_server.close()
        # dstack's health is a metric; readiness stays the proxy's own (503 only when draining).
        async with session.get(proxy_process.admin_url + "/readyz") as resp:
            assert (resp.status, await resp.json()) == (200, {"status": "ready"})
        async with session.get(proxy_process.admin_url + "/metrics") as resp:
            assert "dstack_coalescer_upstream_healthy 0.0" in await resp.text()


async def test_logs_are_json_name_upstream_errors_and_never_credentials(
    proxy_process: ProxyProcess, upstream_server: Any
) -> None:
    headers = {"Authorization": f"Bearer {SECRET}", "Cookie": f"session={SECRET}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            proxy_process.url + "/api/project/main/runs/stop",
            json={"runs_names": ["a"], "abort": False},
            headers=headers,
        ):
            pass
        await upstream_server.close()
        async with session.get(proxy_process.url + "/api/x", headers=headers) as resp:
            assert resp.status == 502
    await asyncio.to_thread(proxy_process.stop)
    lines = proxy_process.log.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    names = [e["event"] for e in events]
    assert {"listening", "batch_flushed", "upstream_failed", "shutdown_complete"} <= set(names)
    assert SECRET not in proxy_process.log.read_text()


DRAIN = 2.0
# What the process may take beyond drain_seconds to exit once everything is answered. Each of
# these fails it: halves and quarters spent one after the other (3 budgets before), aiohttp
# waiting out its own default 60 s, a caller left without an answer.
EXIT_MARGIN = 1.0


async def test_shutdown_answers_every_caller_within_one_drain_budget(
    upstream_server: Any, fake: FakeUpstream, tmp_path: Path
) -> None:
    fake.gate = asyncio.Event()  # batch calls stay in the air
    proxy = ProxyProcess(
        f"http://localhost:{upstream_server.port}",
        tmp_path / "proxy.log",
        "--drain-seconds",
        str(DRAIN),
        "--read-timeout",
        "60",
    )
    await asyncio.to_thread(proxy.__enter__)
    assert proxy.proc is not None
    headers = {"Authorization": "Bearer member"}
    async with aiohttp.ClientSession() as session:

        async def answer(method: str, path: str, body: object = None) -> tuple[int, str, object]:
            async with session.request(method, proxy.url + path, json=body, headers=headers) as r:
                return r.status, r.headers.get("X-Proxy-Error", ""), await r.json()

        def stop(name: str) -> asyncio.Future[tuple[int, str, object]]:
            body = {"runs_names": [name], "abort": False}
            return asyncio.ensure_future(answer("POST", "/api/project/main/runs/stop", body))

        in_the_air = stop("a")
        while not fake.runs_calls():
            await asyncio.sleep(0.02)
        queued = stop("a")  # the same run: waits behind the flight, one flight per name
        stuck = asyncio.ensure_future(answer("GET", "/hang"))  # pass-through, never answered
        while not [c for c in fake.calls if c.path == "/hang"]:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # b's window has closed: its batch is queued
        assert len(fake.runs_calls()) == 1
        started = asyncio.get_running_loop().time()
        proxy.proc.send_signal(signal.SIGTERM)
        answers = await asyncio.wait_for(asyncio.gather(in_the_air, queued, stuck), 10)
        code = await asyncio.to_thread(proxy.proc.wait, 10)
        took = asyncio.get_running_loop().time() - started
    fake.gate.set()
    for status, marker, body in answers:  # answered, not dropped; in dstack's error shape
        assert (status, marker) == (504, "upstream_timeout")
        assert isinstance(body, dict) and list(body) == ["detail"]
        ((detail,),) = [body["detail"]]
        assert detail["code"] == "upstream_timeout" and detail["msg"]
    assert code == 0
    assert took <= DRAIN + EXIT_MARGIN, f"shutdown took {took:.2f} s for a {DRAIN} s budget"


async def test_the_dockerfile_healthcheck_command_passes_against_the_admin_listener(
    proxy_process: ProxyProcess,
) -> None:
    dockerfile = (Path(__file__).parents[2] / "Dockerfile").read_text()
    found = re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])\n", dockerfile)
    assert found is not None
    check = json.loads(found.group(1))
    check[0] = sys.executable  # the image's `python`
    env = {**os.environ, "COALESCER_ADMIN_PORT": str(proxy_process.admin_port)}
    healthy = await asyncio.to_thread(subprocess.run, check, env=env, capture_output=True)
    assert healthy.returncode == 0, healthy.stderr
    await asyncio.to_thread(proxy_process.stop)
    gone = await asyncio.to_thread(subprocess.run, check, env=env, capture_output=True)
    assert gone.returncode != 0
