"""The shipped front as it runs in Kubernetes and Compose: nginx from deploy/nginx/ in front of
HAProxy with deploy/haproxy/ (the hash ring), finding the replicas in a real DNS server
(dnsmasq on loopback), three real proxy replicas on addresses of their own, and an upstream that
counts the calls each replica makes.

Two ways to name the replicas, as shipped: one stable name per replica (a StatefulSet under its
headless Service, statefulset.cfg), and one name for every replica (a scaled Compose service,
service.cfg). For both: bursts for 20 projects each reach one replica in one or two calls; a
replica taken out of DNS moves only its own projects; it gets them back when it returns; and
nothing is sent twice. Then a rolling restart under a steady stream of stops: every caller gets
its real answer.

The upstream is a fake: it must tell which replica called (each has an upstream port of its own)
and hold calls long enough for a drain to matter, which a real dstack server cannot be made to
do. nginx and HAProxy run in the shipped front images (deploy/nginx/ and deploy/haproxy/
Dockerfiles, built by conftest.py on a debootstrap trixie) on the host's network: the versions
that ship, not the host's."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import ssl
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
from aiohttp import web

from harness.processes import find_free_port
from tests.support.front import (
    Dnsmasq,
    HaproxyRing,
    NginxFront,
    Replica,
    make_certificate,
    sample,
    scrape,
)

from .conftest import MEASURED

ROOT = Path(__file__).resolve().parents[2]
K8S_CONFIG = ROOT / "deploy" / "kubernetes" / "config.yaml"
PROJECTS = [f"team-{i}" for i in range(20)]
STOPS_PER_PROJECT = 5
REPLICAS = 3
UPSTREAM_DELAY = 0.05  # seconds per stop call: calls overlap as dstack's do


@dataclass
class Call:
    replica: int
    project: str
    names: list[str]


@dataclass
class Upstream:
    """Answers every runs/stop with dstack's `null` after `delay`; records who called."""

    ports: list[int]
    delay: float = UPSTREAM_DELAY
    calls: list[Call] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        replica = self.ports.index(sockname[1]) if sockname else -1
        body = orjson.loads(await request.read())
        self.calls.append(Call(replica, request.match_info["project"], body["runs_names"]))
        await asyncio.sleep(self.delay)
        return web.Response(body=b"null", content_type="application/json")

    def since(self, mark: int) -> list[Call]:
        return self.calls[mark:]


async def healthcheck(request: web.Request) -> web.Response:
    return web.json_response({})


@contextlib.asynccontextmanager
async def upstream_sites(count: int) -> AsyncIterator[Upstream]:
    ports = [find_free_port() for _ in range(count)]
    upstream = Upstream(ports)
    app = web.Application()
    app.router.add_post("/api/project/{project}/runs/stop", upstream.handle)
    app.router.add_get("/healthcheck", healthcheck)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for port in ports:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield upstream
    finally:
        await runner.cleanup()


@dataclass
class Stack:
    dns: Dnsmasq
    discovery: str
    addresses: list[str]
    replicas: list[Replica | None]
    upstream: Upstream
    front: NginxFront
    client: httpx.AsyncClient
    start_replica: object
    serial: Iterator[int] = field(default_factory=itertools.count)

    def records(self, present: set[int]) -> dict[str, list[str]]:
        if self.discovery == "statefulset.cfg":
            return {f"dstack-coalescer-{i}.pods.test": [self.addresses[i]] for i in sorted(present)}
        return {
            "coalescer.test": [self.addresses[i] for i in sorted(present)],
            "dstack.test": ["127.0.0.1"],
        }

    async def stop(self, project: str) -> tuple[int, bytes]:
        name = f"run-{next(self.serial)}"
        body = orjson.dumps({"runs_names": [name], "abort": False})
        resp = await self.client.post(
            f"/api/project/{project}/runs/stop",
            content=body,
            headers={"Authorization": "Bearer t", "Content-Type": "application/json"},
        )
        return resp.status_code, resp.content

    async def burst(self, projects: list[str]) -> dict[str, list[Call]]:
        """STOPS_PER_PROJECT one-run stops for each project, all at once on one HTTP/2
        connection; the upstream calls they caused, per project. A first burst, checked for
        placement only, opens the connections from nginx through the ring to the replicas,
        as a front in use has them open (a busy 2-core machine opening a hundred at once
        spreads a burst past the window)."""
        placement(await self._burst(projects), counted=False)
        return await self._burst(projects)

    async def _burst(self, projects: list[str]) -> dict[str, list[Call]]:
        mark = len(self.upstream.calls)
        answers = await asyncio.gather(
            *(self.stop(p) for p in projects for _ in range(STOPS_PER_PROJECT))
        )
        assert set(answers) == {(200, b"null")}, Counter(answers)
        calls: dict[str, list[Call]] = defaultdict(list)
        for call in self.upstream.since(mark):
            calls[call.project].append(call)
        return calls


def placement(calls: dict[str, list[Call]], *, counted: bool = True) -> dict[str, int]:
    """Each project's replica, checking it had one, in one or two calls (`counted`)."""
    where = {}
    for project, made in calls.items():
        replicas = {c.replica for c in made}
        assert len(replicas) == 1, f"{project} reached replicas {replicas}"
        assert not counted or 1 <= len(made) <= 2, f"{project}: {len(made)} calls"
        where[project] = replicas.pop()
    return where


def assert_each_name_sent_once(upstream: Upstream) -> None:
    sent = Counter(n for c in upstream.calls for n in c.names)
    twice = {n: k for n, k in sent.items() if k > 1}
    assert not twice, f"sent more than once: {twice}"


async def settle(
    stack: Stack,
    projects: list[str],
    want: Callable[[dict[str, int]], bool],
    timeout: float = 30,
    starting: bool = False,
) -> None:
    """Until one stop for each of `projects` lands as `want` says of {project: replica}: the
    ring has caught up with DNS and the replicas' health."""
    deadline = time.monotonic() + timeout
    while True:
        mark = len(stack.upstream.calls)
        answers = await asyncio.gather(*(stack.stop(p) for p in projects))
        # A ring just started may have found no replica yet (503 from HAProxy).
        assert starting or set(answers) == {(200, b"null")}, Counter(answers)
        landed = {c.project: c.replica for c in stack.upstream.since(mark)}
        if len(landed) == len(projects) and want(landed):
            return
        assert time.monotonic() < deadline, f"the ring did not settle: {landed}"
        await asyncio.sleep(0.5)


@pytest.fixture
def images(nginx_image: str, haproxy_image: str) -> tuple[str, str]:
    """The shipped front images: (nginx, the HAProxy ring)."""
    return nginx_image, haproxy_image


@contextlib.asynccontextmanager
async def ring_stack(
    workdir: Path,
    images: tuple[str, str],
    discovery: str,
    count: int = REPLICAS,
    delay: float = UPSTREAM_DELAY,
) -> AsyncIterator[Stack]:
    nginx_image, haproxy_image = images
    base = f"127.{random.randint(64, 250)}.{random.randint(0, 250)}"
    addresses = [f"{base}.{10 + i}" for i in range(count)]
    port, admin_port = find_free_port(addresses[0]), find_free_port(addresses[0])
    cert = make_certificate(workdir)
    async with upstream_sites(count) as upstream:
        upstream.delay = delay

        def start_replica(i: int) -> Replica:
            return Replica(
                addresses[i],
                port,
                admin_port,
                f"http://127.0.0.1:{upstream.ports[i]}",
                K8S_CONFIG,
                workdir / f"replica-{i}.log",
            ).start()

        env = {"RING_PORT": str(port), "RING_ADMIN_PORT": str(admin_port)}
        if discovery == "statefulset.cfg":
            env["RING_PODS"] = "pods.test"
        else:
            env["RING_SERVICE"] = f"coalescer.test:{port}"
            env["RING_DSTACK_LISTEN"] = f"127.0.0.1:{find_free_port()}"
            env["RING_DSTACK_SERVER"] = f"dstack.test:{upstream.ports[0]}"
        replicas: list[Replica | None] = []
        dns = Dnsmasq(workdir / "dns")
        try:
            replicas = [start_replica(i) for i in range(count)]
            with dns:
                env["RING_NAMESERVER"] = dns.address
                with (
                    HaproxyRing(workdir / "ring", discovery, env, haproxy_image) as ring,
                    NginxFront(
                        workdir / "nginx",
                        [ring.address],
                        # Compose: nginx reaches dstack through the ring, which follows it.
                        env.get("RING_DSTACK_LISTEN", f"127.0.0.1:{upstream.ports[0]}"),
                        cert,
                        image=nginx_image,
                    ) as front,
                ):
                    tls = ssl.create_default_context(cafile=str(cert[0]))
                    async with httpx.AsyncClient(
                        http2=True, verify=tls, base_url=front.url, timeout=120
                    ) as client:
                        stack = Stack(
                            dns, discovery, addresses, replicas, upstream, front, client,
                            start_replica,
                        )  # fmt: skip
                        dns.serve(stack.records(set(range(count))))
                        yield stack
        finally:
            for r in replicas:
                if r is not None:
                    r.stop()


def split(where: dict[str, int]) -> str:
    count = Counter(where.values())
    return " / ".join(str(count.get(i, 0)) for i in range(REPLICAS))


@pytest.mark.parametrize("discovery", ["statefulset.cfg", "service.cfg"])
async def test_each_project_on_one_replica_through_dns_changes(
    discovery: str, tmp_path: Path, images: tuple[str, str]
) -> None:
    async with ring_stack(tmp_path, images, discovery) as stack:
        everyone = set(range(REPLICAS))
        # Every replica resolved and healthy: each has some of the projects.
        await settle(
            stack, PROJECTS, lambda landed: set(landed.values()) == everyone, starting=True
        )
        first = placement(await stack.burst(PROJECTS))
        assert set(first.values()) == everyone, first
        MEASURED[f"ring {discovery}: projects per replica"] = split(first)

        # Replica `gone` leaves DNS (a pod terminating, a container removed) and stops.
        gone = Counter(first.values()).most_common(1)[0][0]
        stack.dns.serve(stack.records(everyone - {gone}))
        mine = [p for p in PROJECTS if first[p] == gone]
        await settle(stack, mine, lambda landed: gone not in landed.values())
        replica = stack.replicas[gone]
        assert replica is not None
        assert replica.stop() == 0
        stack.replicas[gone] = None
        second = placement(await stack.burst(PROJECTS))
        moved = {p for p in PROJECTS if second[p] != first[p]}
        assert moved == set(mine), (first, second)
        MEASURED[f"ring {discovery}: without replica {gone}"] = split(second)

        # It comes back under its name and address: it gets its own projects back.
        stack.replicas[gone] = stack.start_replica(gone)  # type: ignore[operator]
        stack.dns.serve(stack.records(everyone))
        await settle(stack, mine, lambda landed: set(landed.values()) == {gone})
        third = placement(await stack.burst(PROJECTS))
        assert third == first
        MEASURED[f"ring {discovery}: replica {gone} back"] = split(third)
        assert_each_name_sent_once(stack.upstream)


# The shipped Kubernetes timing, scaled down: the preStop hook waits for DNS to drop the pod
# (15 s there, for endpoint propagation and CoreDNS's 5 s TTL; here dnsmasq answers at once,
# and the ring notices within its resolve interval plus `hold nx`, about 3 s).
PRE_STOP = 4.0
ROLLOUT_DELAY = 3.0  # each stop call takes 3 s upstream: a flight and the batch behind it
# outlast the preStop wait, so callers are still held when SIGTERM comes


def in_flight(replica: Replica) -> int:
    metrics = scrape(replica.admin_url)
    return int(sample(metrics, "dstack_coalescer_requests_in_flight"))


async def test_a_rolling_restart_under_a_steady_stream_of_stops_loses_no_caller(
    tmp_path: Path,
    images: tuple[str, str],
) -> None:
    """Two replicas restarted one after the other as Kubernetes does it (the name leaves DNS,
    preStop waits, SIGTERM drains with the shipped drain_seconds, a new pod takes the name),
    while stops keep arriving for ten projects: each gets dstack's answer, none is sent twice."""
    projects = PROJECTS[:10]
    async with ring_stack(
        tmp_path, images, "statefulset.cfg", count=2, delay=ROLLOUT_DELAY
    ) as stack:
        await settle(stack, projects, lambda landed: len(set(landed.values())) == 2, starting=True)
        mark = len(stack.upstream.calls)
        answers: list[tuple[int, bytes]] = []
        waits: list[float] = []
        running = True

        async def caller(project: str) -> None:
            began = time.monotonic()
            answers.append(await stack.stop(project))
            waits.append(time.monotonic() - began)

        async def stream() -> None:
            tasks = []
            for i in itertools.count():
                if not running:
                    break
                tasks.append(asyncio.create_task(caller(projects[i % len(projects)])))
                await asyncio.sleep(0.05)  # below 1 000 in all: nginx's per-connection cap
            await asyncio.gather(*tasks)

        streaming = asyncio.create_task(stream())
        await asyncio.sleep(1.5)
        drains = []
        # A StatefulSet's rolling update: the highest ordinal first. dstack takes longer to
        # answer than the preStop wait, so SIGTERM finds callers still held on the replica,
        # which must get their real answers within drain_seconds.
        for i in (1, 0):
            stack.dns.serve(stack.records({0, 1} - {i}))
            await asyncio.sleep(PRE_STOP)
            replica = stack.replicas[i]
            assert replica is not None
            held = await asyncio.to_thread(in_flight, replica)
            began = time.monotonic()
            assert await asyncio.to_thread(replica.stop) == 0, replica.log_tail()
            drains.append(f"{held} held, drained in {time.monotonic() - began:.1f} s")
            stack.replicas[i] = stack.start_replica(i)  # type: ignore[operator]
            stack.dns.serve(stack.records({0, 1}))
            await asyncio.sleep(3.0)  # resolved and checked healthy before the next one goes
        running = False
        await streaming
        calls = stack.upstream.since(mark)
        assert len(answers) > 300
        assert Counter(answers) == Counter({(200, b"null"): len(answers)})
        assert sum(len(c.names) for c in calls) == len(answers)  # every stop reached dstack
        assert_each_name_sent_once(stack.upstream)
        waits.sort()
        MEASURED["rollout: callers, upstream calls"] = f"{len(answers)}, {len(calls)}"
        MEASURED["rollout: caller wait p50 / max"] = (
            f"{waits[len(waits) // 2]:.2f} s / {waits[-1]:.2f} s"
        )
        MEASURED["rollout: at SIGTERM"] = "; ".join(drains)
        assert not any(d.startswith("0 held") for d in drains), drains


async def test_a_recreated_replica_at_a_new_address_is_followed(
    tmp_path: Path, images: tuple[str, str]
) -> None:
    """Compose recreates a container with a new address under the same name: the ring follows
    it (where nginx alone answered 502 until restarted), and so does the way to dstack."""
    async with ring_stack(tmp_path, images, "service.cfg", count=1) as stack:
        everyone = {0}
        await settle(stack, PROJECTS[:1], lambda landed: True, starting=True)
        old = stack.replicas[0]
        assert old is not None
        assert old.stop() == 0
        stack.addresses[0] = stack.addresses[0].rsplit(".", 1)[0] + ".99"  # a new address
        stack.replicas[0] = stack.start_replica(0)  # type: ignore[operator]
        stack.dns.serve(stack.records(everyone))
        # `compose up` reports the new container healthy at its first check, 5 s on.
        await asyncio.sleep(5)
        calls = await stack.burst(PROJECTS)
        assert set(placement(calls).values()) == {0}
        assert_each_name_sent_once(stack.upstream)
        health = await stack.client.get("/healthcheck")  # not batchable: to dstack, via the ring
        assert (health.status_code, health.json()) == (200, {})
