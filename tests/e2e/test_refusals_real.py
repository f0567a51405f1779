"""dstack's refusals through the proxy, against a REAL dstack server: every caller in a batched
burst gets exactly what its own request gets alone, also where dstack's refusal names nothing,
and a refusal about the key is shared after one probe naming nothing (docs/dstack-api.md,
Refusals of the batchable endpoints).

Each burst is sent at once on one key, so that it is batched under the shipped default policy;
the proxy's metrics show that the batch path ran, and the server's debug log counts the
upstream calls.

Which refusals a real server here can be made to give:
- the bare 403 for an SSH fleet that a project member may not manage (the servers of
  tests/e2e/conftest.py keep SSH fleets to admins); its host is a loopback port nobody listens
  on, so the fleet stays, with a pending instance, for as long as the test needs;
- a 5xx that one item causes: an instance number too large for SQLite makes 0.22.5 fail the
  call with 500 (0.18.40 never puts the numbers in SQL, so there it is a 200: the test still
  checks that every caller gets its own answer);
- a refusal about the key: a member of another project (403 from the project check), a client
  newer than the server (400);
- the lock message ("... are being processed currently"): a fleet whose row the background
  pipeline holds locked (0.22.5; the test sets the row's lock as the pipeline does, since no
  pipeline holds a cloud-less fleet for the 5 s dstack waits). 0.18.40 waits on an in-process
  lock instead and has no such refusal.
Not here: "Failed to delete instance while the job is provisioning" needs a job provisioning on
a fleet's instance, and volumes and gateways need a cloud backend; a server-wide 5xx cannot be
made on demand without breaking the shared server. The dispatcher's property test covers those
with dstack's own bytes (tests/unit/test_dispatching.py).
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import Iterator
from dataclasses import astuple, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.api import ApiError, add_member, api_post, create_project, create_user
from harness.bursts import burst
from harness.metrics import KEYS, read_metrics
from harness.processes import ProxyProcess, find_free_port
from harness.server import DstackServer
from harness.versions import CURRENT_VERSION

# Every refusal case also runs against a Postgres-backed server (issue 18).
pytestmark = pytest.mark.databases("sqlite", "postgres")

PROJECT = "refusals"
STOP = "/api/project/main/runs/stop"
FLEETS = f"/api/project/{PROJECT}/fleets"
NOT_ALLOWED = (403, b'{"msg":"Access denied","code":null}')  # raised in the handler: no detail
OK = (200, b"null")


def bound(n: int) -> int:
    """The dispatcher's budget for a batch of n callers (proxy/batching/flight.py)."""
    return 2 + n + 2 * math.ceil(math.log2(n))


@pytest.fixture(scope="module")
def member(dstack_server: DstackServer) -> Iterator[str]:
    """A project member (role `user`): it may delete cloud fleets but not SSH fleets."""
    create_project(dstack_server, PROJECT)
    token = create_user(dstack_server, "refusals-member")
    add_member(dstack_server, PROJECT, "refusals-member", "user")
    yield token
    for fleet in api_post(dstack_server, f"{FLEETS}/list", {}):  # admin: SSH fleets too
        api_post(dstack_server, f"{FLEETS}/delete", {"names": [fleet["name"]]})


def create_fleet(server: DstackServer, configuration: dict[str, Any]) -> None:
    spec = {"configuration": {"type": "fleet", **configuration}, "profile": {"name": "default"}}
    if server.version.startswith("0.18."):  # no plans yet (docs/dstack-api.md)
        api_post(server, f"{FLEETS}/create", {"spec": spec})
        return
    plan = api_post(server, f"{FLEETS}/get_plan", {"spec": spec})
    api_post(server, f"{FLEETS}/apply", {"plan": {"spec": plan["spec"]}, "force": False})


def create_ssh_fleet(server: DstackServer, name: str, host: str) -> None:
    """An SSH fleet whose host is a loopback port nobody listens on: its instance stays
    pending while the server fails to reach it."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    ssh = {
        "user": "root",
        "port": find_free_port(),
        "ssh_key": {"public": public.decode(), "private": private},
        "hosts": [host],
    }
    create_fleet(server, {"name": name, "ssh_config": ssh})


def create_cloud_fleet(server: DstackServer, name: str) -> None:
    """A fleet of no nodes: created without any backend, and deleted at once by any member."""
    create_fleet(server, {"name": name, "nodes": 0})


def fleet_statuses(server: DstackServer) -> dict[str, str]:
    return {f["name"]: f["status"] for f in api_post(server, f"{FLEETS}/list", {})}


@dataclass(frozen=True)
class Tally:
    """The proxy's own count of one endpoint's traffic (its /metrics): requests batched, batches
    flushed, probes sent, and requests that left alone on a quiet key (all endpoints)."""

    batched: float
    flushes: float
    probes: float
    alone: float

    def __sub__(self, other: Tally) -> Tally:
        return Tally(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))


def tally(proxy: ProxyProcess, endpoint: str) -> Tally:
    metrics = read_metrics(proxy.admin_url)
    at = f'endpoint="{endpoint}"'
    return Tally(
        metrics.get(f"dstack_coalescer_batched_requests_total{{{at}}}", 0.0),
        sum(
            v
            for k, v in metrics.items()
            if k.startswith("dstack_coalescer_batch_flushes_total{") and at in k
        ),
        metrics.get(f'dstack_coalescer_batch_upstream_calls_total{{{at},purpose="probe"}}', 0.0),
        metrics.get('dstack_coalescer_batch_bypass_total{reason="alone"}', 0.0),
    )


async def landed(proxy: ProxyProcess) -> None:
    """Wait until the proxy has no flight in the air: callers are answered before their
    flight ends, and a flight's calls and metrics are complete only when it has."""
    for _ in range(300):
        if read_metrics(proxy.admin_url).get(KEYS, 0.0) == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("a flight stayed in the air for 30 s")


def most_calls(burst: Tally, per_batch: int) -> int:
    """The most upstream calls a burst may cost: one per request that left alone, and what the
    dispatcher may spend on each batch (the shipped policy may cut one burst into several)."""
    return int(burst.alone + burst.flushes * per_batch)


async def test_a_members_burst_gets_403_only_for_the_ssh_fleets_it_may_not_delete(
    dstack_server: DstackServer, proxy_process: ProxyProcess, member: str
) -> None:
    # Issue 15: a member deletes three SSH fleets and five cloud fleets at once. Before, all
    # eight callers got the SSH fleets' 403, which names no fleet, and no cloud fleet went.
    ssh = [f"ssh-{i}" for i in range(3)]
    cloud = [f"cloud-{i}" for i in range(5)]
    for i, name in enumerate(ssh):
        await asyncio.to_thread(create_ssh_fleet, dstack_server, name, f"127.0.0.{i + 2}")
    for name in [*cloud, "twin"]:
        await asyncio.to_thread(create_cloud_fleet, dstack_server, name)
    delete = f"{FLEETS}/delete"
    # Each alone, sent directly: an SSH fleet's delete changes nothing, so it can be asked on
    # the fleet itself; a cloud fleet's is asked on a twin.
    alone = {
        "ssh": (await burst(dstack_server.url, delete, [{"names": [ssh[0]]}], member))[0],
        "cloud": (await burst(dstack_server.url, delete, [{"names": ["twin"]}], member))[0],
    }
    assert (alone["ssh"], alone["cloud"]) == (NOT_ALLOWED, OK)  # dstack's own bytes

    names = [ssh[0], cloud[0], ssh[1], cloud[1], cloud[2], ssh[2], cloud[3], cloud[4]]
    before = tally(proxy_process, "fleets/delete")
    mark = dstack_server.log_mark()
    answers = await burst(proxy_process.url, delete, [{"names": [n]} for n in names], member)
    await landed(proxy_process)
    calls = dstack_server.count_requests("/fleets/delete", since=mark)
    sent = tally(proxy_process, "fleets/delete") - before
    print(f"upstream calls {calls}, {sent}")  # shown with -s, or when the test fails

    assert dict(zip(names, answers, strict=True)) == {
        n: alone["ssh"] if n in ssh else alone["cloud"] for n in names
    }
    statuses = await asyncio.to_thread(fleet_statuses, dstack_server)
    assert {n: statuses.get(n) for n in ssh} == dict.fromkeys(ssh, "active")
    assert not {n for n in cloud if statuses.get(n) == "active"}  # terminating, or gone
    # The burst was batched, the probe (naming nothing, 200) showed the 403 depends on names.
    assert sent.batched >= 2 and sent.probes >= 1, sent
    assert calls <= most_calls(sent, bound(len(names))), (calls, sent)


async def test_a_5xx_one_instance_number_causes_reaches_only_its_caller(
    dstack_server: DstackServer, proxy_process: ProxyProcess
) -> None:
    # An instance number above SQLite's 64-bit integers fails the call on 0.22.5, whatever the
    # fleet (docs/dstack-api.md). Before, the batch's 500 went to every caller unread.
    path = f"{FLEETS}/delete_instances"
    nums = [0, 1, 2, 2**63, 3, 4, 5, 6]
    bodies = [{"name": "no-such-fleet", "instance_nums": [n]} for n in nums]
    token = dstack_server.admin_token
    alone = [(await burst(dstack_server.url, path, [b], token))[0] for b in bodies]  # no-ops
    if dstack_server.version == CURRENT_VERSION:
        assert alone[3] == (500, b"Internal Server Error")
    assert alone.count(OK) >= len(nums) - 1

    before = tally(proxy_process, "fleets/delete_instances")
    mark = dstack_server.log_mark()
    answers = await burst(proxy_process.url, path, bodies, token)
    await landed(proxy_process)
    sent = tally(proxy_process, "fleets/delete_instances") - before
    # dstack's request log has no line for a call whose handler raised (the 500s): those are
    # counted by their traceback's last line.
    calls = dstack_server.count_requests("/fleets/delete_instances", since=mark)
    calls += dstack_server.read_log(since=mark).count("OverflowError: Python int too large")
    print(f"upstream calls {calls}, {sent}")  # shown with -s, or when the test fails

    assert answers == alone
    assert sent.batched >= 2, sent
    assert calls <= most_calls(sent, bound(len(nums))), (calls, sent)


async def test_a_non_members_burst_is_refused_as_a_whole_after_one_probe(
    dstack_server: DstackServer, proxy_process: ProxyProcess, member: str
) -> None:
    # On fleets a 403 can be about one SSH fleet, so it is not key-wide by status: the probe
    # naming nothing gets the same 403 from the project check, which shows it is the key's.
    outsider = create_user(dstack_server, "refusals-outsider")
    path = f"{FLEETS}/delete"
    bodies = [{"names": [f"cloud-x{i}"]} for i in range(16)]
    alone = (await burst(dstack_server.url, path, bodies[:1], outsider))[0]
    assert alone[0] == 403 and b'"detail"' in alone[1]

    before = tally(proxy_process, "fleets/delete")
    mark = dstack_server.log_mark()
    answers = await burst(proxy_process.url, path, bodies, outsider)
    await landed(proxy_process)
    calls = dstack_server.count_requests("/fleets/delete", since=mark)
    sent = tally(proxy_process, "fleets/delete") - before
    print(f"upstream calls {calls}, {sent}")  # shown with -s, or when the test fails

    assert answers == [alone] * 16
    assert sent.batched >= 2 and 1 <= sent.probes <= sent.flushes, sent
    # Per batch, the call and the probe (before, 3: the call and its two halves); a batch of
    # one caller is that caller's own request, with no probe.
    assert calls == sent.alone + sent.flushes + sent.probes, (calls, sent)


# 0.18.40 refuses a bad version in a middleware that its request log never sees, so the calls
# cannot be counted there (docs/dstack-api.md, "Differences in 0.18.40").
@pytest.mark.server_versions(CURRENT_VERSION)
async def test_an_incompatible_api_version_costs_a_few_calls_not_one_per_caller(
    dstack_server: DstackServer, proxy_process: ProxyProcess
) -> None:
    # A client newer than the server is refused with 400 whatever it names (docs/dstack-api.md,
    # API versions). Before issue 7, 16 such callers cost 25 calls (bisection to the leaves).
    version = {"X-API-Version": "99.0.0"}
    token = dstack_server.admin_token
    bodies = [{"runs_names": [f"never-{i}"], "abort": False} for i in range(16)]
    mark = dstack_server.log_mark()
    direct = (await burst(dstack_server.url, STOP, bodies[:1], token, version))[0]
    assert direct[0] == 400
    assert dstack_server.count_requests("/runs/stop", since=mark) == 1  # refusals are counted

    before = tally(proxy_process, "runs/stop")
    mark = dstack_server.log_mark()
    answers = await burst(proxy_process.url, STOP, bodies, token, version)
    await landed(proxy_process)
    calls = dstack_server.count_requests("/runs/stop", since=mark)
    sent = tally(proxy_process, "runs/stop") - before
    print(f"upstream calls {calls}, {sent}")  # shown with -s, or when the test fails

    assert answers == [direct] * 16  # dstack's own status and bytes, for every caller
    assert sent.batched >= 2 and 1 <= sent.probes <= sent.flushes, sent
    # Per batch, the call, then the probe naming nothing, which gets the same refusal (a batch
    # of one caller is that caller's own request, with no probe).
    assert calls == sent.alone + sent.flushes + sent.probes, (calls, sent)


@pytest.mark.server_versions(CURRENT_VERSION)
async def test_locked_fleets_fail_only_the_callers_that_name_them(
    dstack_server: DstackServer, proxy_process: ProxyProcess, member: str
) -> None:
    # dstack's lock message names nothing. With a locked fleet in each half of the batch both
    # halves got the same message, and before, every caller got it.
    names = [f"lock-{i}" for i in range(6)]
    held = {"lock-1", "lock-4"}
    for name in [*names, "lock-twin"]:
        await asyncio.to_thread(create_cloud_fleet, dstack_server, name)
    for name in held:
        hold_lock(dstack_server, name)
    try:
        path = f"{FLEETS}/delete"
        locked = (await burst(dstack_server.url, path, [{"names": ["lock-1"]}], member))[0]
        assert locked[0] == 400 and b"are being processed currently" in locked[1]
        free = (await burst(dstack_server.url, path, [{"names": ["lock-twin"]}], member))[0]
        assert free == OK

        before = tally(proxy_process, "fleets/delete")
        mark = dstack_server.log_mark()
        answers = await burst(proxy_process.url, path, [{"names": [n]} for n in names], member)
        await landed(proxy_process)
        calls = dstack_server.count_requests("/fleets/delete", since=mark)
        sent = tally(proxy_process, "fleets/delete") - before
        print(f"upstream calls {calls}, {sent}")  # shown with -s, or when the test fails
        statuses = await asyncio.to_thread(fleet_statuses, dstack_server)
    finally:
        for name in held:
            release_lock(dstack_server, name)

    assert dict(zip(names, answers, strict=True)) == {n: locked if n in held else OK for n in names}
    assert {n for n in names if statuses.get(n) == "active"} == held
    assert sent.batched >= 2, sent
    assert calls <= most_calls(sent, bound(len(names))), (calls, sent)


def _update_fleet(server: DstackServer, lock_until: datetime | None, fleet: str) -> int:
    """Set `fleet`'s `lock_expires_at` in the server's own database (SQLite or Postgres); the
    rows changed."""
    if server.postgres is not None and server.database_url is not None:
        value = "NULL" if lock_until is None else f"'{lock_until.isoformat(sep=' ')}'"
        out = server.postgres.psql(
            server.database_url.rpartition("/")[2],
            f"WITH changed AS (UPDATE fleets SET lock_expires_at = {value}"
            f" WHERE name = '{fleet}' AND NOT deleted RETURNING 1) SELECT count(*) FROM changed",
        )
        return int(out.strip())
    path = server.home / ".dstack" / "server" / "data" / "sqlite.db"
    with sqlite3.connect(path, timeout=30) as db:
        return db.execute(
            "UPDATE fleets SET lock_expires_at = ? WHERE name = ? AND deleted = 0",
            (None if lock_until is None else lock_until.isoformat(sep=" "), fleet),
        ).rowcount


def hold_lock(server: DstackServer, fleet: str) -> None:
    """Mark `fleet` as held by the background pipeline for a minute, as the pipeline does while
    it processes a fleet (its `lock_expires_at` column)."""
    until = (datetime.now(UTC) + timedelta(minutes=1)).replace(tzinfo=None)
    assert _update_fleet(server, until, fleet) == 1


def release_lock(server: DstackServer, fleet: str) -> None:
    _update_fleet(server, None, fleet)


def test_the_test_server_refuses_ssh_fleets_to_members(
    dstack_server: DstackServer, member: str
) -> None:
    """The premise of the SSH test: without the server's config a member may delete SSH fleets
    (dstack's default), and the 403 would never happen."""
    create_ssh_fleet(dstack_server, "ssh-premise", "127.0.0.9")
    with pytest.raises(ApiError) as refused:
        api_post(dstack_server, f"{FLEETS}/delete", {"names": ["ssh-premise"]}, token=member)
    assert (refused.value.status, refused.value.body.encode()) == NOT_ALLOWED
