"""Small async helpers for the real-server tests: concurrent bursts and the server's own record
of who changed which run (its events API)."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson

from .api import ApiError, api_post
from .rawhttp import exchange_together
from .runs import run_infos
from .server import DstackServer

Answer = tuple[int, bytes]
STOP_MARK = "-> TERMINATING"
USER_STOPS = frozenset({"stopped_by_user", "aborted_by_user"})


def records_events(server: DstackServer) -> bool:
    """Whether the server keeps an events API (0.22.5 does; 0.18.40 answers 405 there)."""
    try:
        api_post(server, "/api/events/list", {"limit": 1})
    except ApiError as exc:
        if exc.status in (404, 405):
            return False
        raise
    return True


async def burst(
    base: str, path: str, bodies: Sequence[Any], token: str, headers: dict[str, str] | None = None
) -> list[Answer]:
    """Send every body at once (one connection each, like a browser's Promise.all)."""
    hdrs = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        **(headers or {}),
    }
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True)
    ) as session:

        async def one(body: Any) -> Answer:
            async with session.post(base + path, data=orjson.dumps(body), headers=hdrs) as resp:
                return resp.status, await resp.read()

        return list(await asyncio.gather(*(one(b) for b in bodies)))


async def raw_burst(
    base: str, path: str, bodies: Sequence[bytes], token: str
) -> list[tuple[int, str | None, bytes]]:
    """`burst` with bodies sent as given, answers with their content type, undecoded."""
    hdrs = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True), auto_decompress=False
    ) as session:

        async def one(body: bytes) -> tuple[int, str | None, bytes]:
            async with session.post(base + path, data=body, headers=hdrs) as resp:
                return resp.status, resp.headers.get("Content-Type"), await resp.read()

        return list(await asyncio.gather(*(one(b) for b in bodies)))


async def in_a_burst(
    base: str,
    path: str,
    body: bytes,
    companions: Sequence[bytes],
    token: str,
    *,
    content_type: str | None = "application/json",
) -> tuple[int, str | None, bytes]:
    """Send `body` so that, through the proxy under its shipped policy, it takes the batch path
    instead of leading an idle key alone: two companions at once first (the second arrives
    while the first is in the air: the key has had company, so for a second it leads no more),
    then `body` at once with a third, so that the two gather into one batch. Each pair goes
    over connections opened beforehand, so that it arrives within a fraction of a millisecond,
    even where dstack answers in 3 ms. The companions must share `body`'s key (same credential
    and shared fields) and name nothing that exists. `content_type` None: all four go without
    that header."""
    url = urllib.parse.urlsplit(base)
    assert url.hostname is not None and url.port is not None

    typed = f"Content-Type: {content_type}\r\n" if content_type is not None else ""

    def request(data: bytes) -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {token}\r\n"
            f"{typed}Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        ).encode() + data

    first, second, third = companions
    await exchange_together(url.hostname, url.port, [request(first), request(second)])
    answer, _ = await exchange_together(url.hostname, url.port, [request(body), request(third)])
    return answer.status or 0, answer.content_type, answer.body


async def send_one_by_one(base: str, path: str, bodies: Sequence[Any], token: str) -> list[Answer]:
    answers = []
    for body in bodies:
        answers += await burst(base, path, [body], token)
    return answers


def stop_events(
    server: DstackServer, project: str, names: Sequence[str], settle: float = 1.0
) -> dict[str, list[tuple[str, str | None]]]:
    """`{run: [(status change, actor)]}` for every user stop the server recorded on those runs.

    Events can appear shortly after the change, so this polls until nothing new arrives for
    `settle` seconds. Robust against the stop race (docs/dstack-api.md, "The stop race"): a run put
    back to pending by the pipeline still shows the user's stop.

    A server without events (0.18.40) records no actor: a run whose termination reason is a
    user's stop gets one entry `("-> <status> (<reason>)", None)`.
    """
    if not records_events(server):
        infos = run_infos(server, project)
        return {
            n: [(f"-> {infos[n].status} ({infos[n].termination_reason})", None)]
            if n in infos and infos[n].termination_reason in USER_STOPS
            else []
            for n in names
        }
    ids = {info.id: name for name, info in run_infos(server, project).items() if name in names}
    previous: dict[str, list[tuple[str, str | None]]] | None = None
    deadline = time.monotonic() + 10
    while True:
        events = [
            e
            for chunk in _chunks(list(ids), 4)
            for e in api_post(server, "/api/events/list", {"target_runs": chunk, "limit": 100})
        ]
        found: dict[str, list[tuple[str, str | None]]] = {n: [] for n in names}
        for event in events:
            if STOP_MARK in event["message"] and event.get("actor_user"):
                for target in event["targets"]:
                    if target["id"] in ids:
                        found[ids[target["id"]]].append((event["message"], event["actor_user"]))
        if found == previous or time.monotonic() > deadline:
            return found
        previous = found
        time.sleep(settle)


def put_back(
    server: DstackServer, project: str, names: Sequence[str], timeout: float = 5.0
) -> set[str]:
    """Runs whose status the server's own pipeline changed after a user's stop: the stop
    race (docs/dstack-api.md, "The stop race"), not the caller's doing. Polls
    for up to `timeout` s, as events can be listed shortly after they happen. A server without
    events (0.18.40, where no such race was seen) gives the empty set."""
    if not records_events(server):
        return set()
    ids = {info.id: name for name, info in run_infos(server, project).items() if name in names}
    deadline = time.monotonic() + timeout
    while True:
        events: dict[str, list[dict[str, Any]]] = {name: [] for name in ids.values()}
        for chunk in _chunks(list(ids), 4):
            for event in api_post(
                server, "/api/events/list", {"target_runs": chunk, "limit": 100, "ascending": True}
            ):
                for target in event["targets"]:
                    if target["id"] in ids:
                        events[ids[target["id"]]].append(event)
        back = {name for name, evs in events.items() if _changed_by_system_after_stop(evs)}
        if back >= set(names) or time.monotonic() > deadline:
            return back
        time.sleep(0.5)


def _changed_by_system_after_stop(events: list[dict[str, Any]]) -> bool:
    stops = [i for i, e in enumerate(events) if STOP_MARK in e["message"] and e.get("actor_user")]
    return bool(stops) and any(
        e.get("actor_user") is None and e["message"].startswith("Run status changed")
        for e in events[stops[0] + 1 :]
    )


def _chunks(items: list[str], size: int) -> list[list[str]]:
    # The events API takes at most 16 targets and returns at most 100 events per page.
    return [items[i : i + size] for i in range(0, len(items), size)]
