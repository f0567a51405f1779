"""One flight per key, always: the batcher and the dispatcher together, on a hand-cranked clock,
against a fake `secrets/delete` (it refuses unknown names, so order matters)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.batching.batcher import Batcher, ClosedBatch, Policy
from proxy.batching.batches import BatchKey, BatchTarget, Member, Outcome, UpstreamReply
from proxy.batching.dispatching import Dispatcher
from proxy.batching.endpoints import DEFAULT_ENDPOINTS, SharedFields
from proxy.errors import UpstreamBusy
from proxy.ops.metrics import Metrics

from .manual_clock import ManualClock, settle

SECRETS = next(s for s in DEFAULT_ENDPOINTS if s.name == "secrets/delete")
KEY = BatchKey("secrets/delete", "main", "p" * 64, (("x-api-version", None),), ())
TARGET = BatchTarget(SECRETS, URL("http://upstream.invalid/x"), CIMultiDict())
WINDOW, MAX_WAIT = 0.02, 5.0


class Secrets:
    """secrets/delete: all or nothing; unknown names refused. Calls are held until released."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.calls: list[list[str | int]] = []
        self.in_air = 0
        self.most_in_air = 0
        self.release = asyncio.Event()

    async def send(
        self, target: BatchTarget, names: Sequence[str | int], shared: SharedFields, call_id: str
    ) -> Outcome:
        self.calls.append(list(names))
        self.in_air += 1
        self.most_in_air = max(self.most_in_air, self.in_air)
        try:
            await self.release.wait()
        finally:
            self.in_air -= 1
        missing = [n for n in names if n not in self.names]
        if missing:
            body = orjson.dumps({"detail": [{"msg": f"Secrets not found: {missing}"}]})
            return UpstreamReply(400, CIMultiDictProxy(CIMultiDict()), body)
        self.names.difference_update(str(n) for n in names)
        return UpstreamReply(200, CIMultiDictProxy(CIMultiDict()), b"null")


def expire(batch: ClosedBatch[BatchKey, Member, BatchTarget]) -> UpstreamBusy:
    return UpstreamBusy("not sent")


def make(
    upstream: Secrets, clock: ManualClock, *, max_size: int, policy: Policy
) -> Batcher[BatchKey, Member, UpstreamReply, BatchTarget]:
    dispatcher = Dispatcher(upstream.send, Metrics())
    return Batcher(
        dispatcher.flush,
        window=WINDOW,
        max_size=max_size,
        max_wait=MAX_WAIT,
        expire=expire,
        policy=policy,
        clock=clock,
    )


async def test_full_batches_naming_one_secret_fly_one_after_the_other_in_arrival_order() -> None:
    clock, upstream = ManualClock(), Secrets({"s1", "s2", "s3"})
    batcher = make(upstream, clock, max_size=2, policy=Policy.WINDOW)
    lists = [("s1",), ("s2",), ("s1", "s3"), ("s3",), ("s1",)]
    callers = []
    for serial, names in enumerate(lists, 1):  # batches [1 2] [3 4] [5], each full or due
        callers.append(
            asyncio.ensure_future(batcher.submit(KEY, Member(names, serial), lambda: TARGET))
        )
        await settle()
    clock.advance(WINDOW)
    await settle()
    assert upstream.calls == [["s1", "s2"]], "a full batch must not fly beside a flight"

    for _ in range(8):  # let every flight return, one at a time
        upstream.release.set()
        await settle()
        clock.advance(WINDOW)
        await settle()
    answers = [(r.status, r.body) for r in await asyncio.gather(*callers)]
    assert upstream.most_in_air == 1
    assert answers == [
        (200, b"null"),
        (200, b"null"),
        (400, b"""{"detail":[{"msg":"Secrets not found: ['s1']"}]}"""),
        (200, b"null"),
        (400, b"""{"detail":[{"msg":"Secrets not found: ['s1']"}]}"""),
    ]
    assert upstream.names == set()  # s3 went with caller 4, after caller 3's refusal
    await batcher.aclose()


async def test_callers_behind_a_stuck_flight_get_503_at_max_wait_and_are_never_sent() -> None:
    clock, upstream = ManualClock(), Secrets({"s1", "s2"})
    batcher = make(upstream, clock, max_size=10, policy=Policy.IDLE)
    first = asyncio.ensure_future(batcher.submit(KEY, Member(("s1",), 1), lambda: TARGET))
    await settle()
    assert upstream.calls == [["s1"]]  # idle key: sent at once
    later = [
        asyncio.ensure_future(batcher.submit(KEY, Member(names, serial), lambda: TARGET))
        for serial, names in ((2, ("s1",)), (3, ("s2",)))
    ]
    await settle()
    clock.advance(MAX_WAIT)
    await settle()
    for caller in later:
        error = caller.exception()
        assert isinstance(error, UpstreamBusy) and (error.status, error.code) == (
            503,
            "upstream_busy",
        )
    upstream.release.set()
    await settle()
    assert (await first).status == 200
    assert upstream.calls == [["s1"]]  # the expired batch never reached the upstream
    assert upstream.names == {"s2"}
    await batcher.aclose()
