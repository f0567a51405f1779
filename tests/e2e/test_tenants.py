"""Tenants never mix, against a REAL dstack server: random interleavings of stop and delete
bursts from a member, a non-member (a member of another project), an unknown token and no token,
with the project spelled in other cases and percent-encoded, and several API versions. The
member only names runs that do not exist; the non-members name the victims, real active runs.

If the proxy ever put a non-member's names into a member's call, a victim would change: none
may, and every caller gets exactly the answer dstack gives the same request sent directly.
Last, no token used in the session reaches the proxy's log (it logs at debug level)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.api import add_member, create_project, create_user
from harness.bursts import stop_events
from harness.processes import ProxyProcess
from harness.runs import create_active_runs, run_states, stop_runs_until_finished
from harness.server import DstackServer
from tests.support.modes import examples

PROJECT = "tenants"
VICTIMS = ("victim-0", "victim-1", "victim-2")
SPELLINGS = ("tenants", "TENANTS", "Tenants", "tenant%73")
_examples = itertools.count()


@dataclass(frozen=True)
class Caller:
    who: str  # member, outsider, unknown, anonymous
    op: str
    project: str
    version: str | None  # X-API-Version: absent, the server's own, or garbage
    names: tuple[str, ...]
    delay_ms: int


@st.composite
def callers(draw: st.DrawFn) -> Caller:
    who = draw(st.sampled_from(("member", "member", "outsider", "unknown", "anonymous")))
    pool = ("ghost-a", "ghost-b", "ghost-c") if who == "member" else VICTIMS
    return Caller(
        who,
        draw(st.sampled_from(("stop", "delete"))),
        draw(st.sampled_from(SPELLINGS)),
        draw(st.sampled_from((None, "own", "garbage!"))),
        tuple(draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2, unique=True))),
        draw(st.integers(0, 25)),
    )


@pytest.fixture(scope="module")
def tokens(dstack_server: DstackServer) -> Iterator[dict[str, str | None]]:
    create_project(dstack_server, PROJECT)
    create_project(dstack_server, "elsewhere")
    member, outsider = (
        create_user(dstack_server, "ten-member"),
        create_user(dstack_server, "ten-out"),
    )
    add_member(dstack_server, PROJECT, "ten-member", "user")
    add_member(dstack_server, "elsewhere", "ten-out", "admin")  # valid token, other project
    create_active_runs(dstack_server, PROJECT, VICTIMS)
    yield {
        "member": member,
        "outsider": outsider,
        "unknown": "ten-no-such-token",
        "anonymous": None,
    }
    stop_runs_until_finished(dstack_server, PROJECT, VICTIMS)


async def _send(
    base: str, caller: Caller, token: str | None, version: str
) -> tuple[int, str | None, bytes]:
    await asyncio.sleep(caller.delay_ms / 1000)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if caller.version is not None:
        headers["X-API-Version"] = version if caller.version == "own" else caller.version
    body: dict[str, object] = {"runs_names": list(caller.names)}
    if caller.op == "stop":
        body["abort"] = False
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
        session.post(
            f"{base}/api/project/{caller.project}/runs/{caller.op}",
            data=orjson.dumps(body),
            headers=headers,
        ) as resp,
    ):
        return resp.status, resp.headers.get("Content-Type"), await resp.read()


async def _burst_then_direct(
    server: DstackServer, proxy_url: str, burst: list[Caller], tokens: dict[str, str | None]
) -> tuple[list[tuple[int, str | None, bytes]], list[tuple[int, str | None, bytes]]]:
    version = server.version
    proxied = await asyncio.gather(*(_send(proxy_url, c, tokens[c.who], version) for c in burst))
    direct = [await _send(server.url, c, tokens[c.who], version) for c in burst]
    return list(proxied), direct


@examples(ci=8, long=40)
@given(burst=st.lists(callers(), min_size=3, max_size=12))
def test_a_non_member_never_changes_anything_and_everyone_gets_dstacks_answer(
    dstack_server: DstackServer,
    proxy_url: str,
    tokens: dict[str, str | None],
    burst: list[Caller],
) -> None:
    next(_examples)
    proxied, direct = asyncio.run(_burst_then_direct(dstack_server, proxy_url, burst, tokens))
    assert proxied == direct
    states = run_states(dstack_server, PROJECT)
    assert all(states.get(v) in ("submitted", "pending") for v in VICTIMS), states


def test_victims_were_never_stopped(
    dstack_server: DstackServer, tokens: dict[str, str | None]
) -> None:
    assert stop_events(dstack_server, PROJECT, VICTIMS) == {v: [] for v in VICTIMS}


def test_no_token_reaches_the_proxy_log(
    dstack_server: DstackServer, proxy_process: ProxyProcess, tokens: dict[str, str | None]
) -> None:
    log = proxy_process.log.read_text()
    assert '"batch_flushed"' in log  # the session's proxy logs at debug level; this test's bursts
    secrets = [dstack_server.admin_token, *(t for t in tokens.values() if t)]
    assert [s for s in secrets if s in log] == []
