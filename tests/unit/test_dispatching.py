"""The dispatcher's policy through its `send` seam: a recording fake upstream, no HTTP.

The fake keeps dstack's contract for list endpoints (docs/dstack-api.md, Failure semantics): a
call either succeeds whole or changes nothing, and a refusal about names names them. What each
caller must get is what its own request gets when sent alone, one after the other in arrival
order.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.batcher import ClosedBatch, FlushReason
from proxy.batches import (
    BatchKey,
    BatchTarget,
    Member,
    Outcome,
    SharedFields,
    UpstreamReply,
    chunks,
    rounds_of,
)
from proxy.dispatching import Dispatcher, Flight
from proxy.endpoints import DEFAULT_ENDPOINTS
from proxy.errors import UpstreamTimeout
from proxy.metrics import Metrics

SPECS = {spec.name: spec for spec in DEFAULT_ENDPOINTS}
REFUSAL = b'{"detail":[{"msg":"Invalid version: garbage!","code":null}]}'


def reply(status: int, body: bytes) -> UpstreamReply:
    return UpstreamReply(status, CIMultiDictProxy(CIMultiDict()), body)


def target(endpoint: str) -> BatchTarget:
    return BatchTarget(SPECS[endpoint], URL("http://upstream.invalid/x"), CIMultiDict())


@dataclass
class FakeUpstream:
    """A list endpoint: `bad` names are refused (400 naming them, or only the first, as fleets
    and volumes do); with `refuse_all` every call gets the same refusal (a bad API version).
    Where the endpoint is not idempotent, names must exist (`existing`) and are deleted."""

    bad: frozenset[str] = frozenset()
    refuse_all: bool = False
    names_first_only: bool = False
    existing: set[str] | None = None
    status: int | None = None  # answer every call with this status (e.g. 500)
    calls: list[list[str | int]] = field(default_factory=list)

    async def send(
        self, target: BatchTarget, names: Sequence[str | int], shared: SharedFields, call_id: str
    ) -> Outcome:
        assert call_id
        self.calls.append(list(names))
        await asyncio.sleep(0)  # calls of one flight overlap
        return self.answer(names)

    def answer(self, names: Sequence[str | int]) -> UpstreamReply:
        if self.status is not None:
            return reply(self.status, b"boom")
        if self.refuse_all:
            return reply(400, REFUSAL)
        wrong = [n for n in dict.fromkeys(names) if n in self.bad]
        if self.existing is not None:
            wrong += [n for n in dict.fromkeys(names) if n not in self.existing]
        if wrong:
            shown = wrong[:1] if self.names_first_only else wrong
            return reply(400, orjson.dumps({"detail": [{"msg": f"refused: {shown}"}]}))
        if self.existing is not None:
            self.existing.difference_update(str(n) for n in names)
        return reply(200, b"null")


async def fly(
    fake: FakeUpstream,
    endpoint: str,
    members: Sequence[Member],
    max_names: int | None = None,
) -> tuple[dict[Member, Outcome | BaseException], Flight]:
    got: dict[Member, Outcome | BaseException] = {}

    def resolve(member: Member, outcome: UpstreamReply | BaseException) -> None:
        assert member not in got, "a member answered twice"
        got[member] = outcome  # type: ignore[assignment]

    flight = Flight(fake.send, target(endpoint), (), resolve, max_names=max_names)
    await flight.run(members)
    return got, flight


def alone(world: FakeUpstream, members: Sequence[Member]) -> dict[Member, Outcome]:
    """Each member's answer when its request is sent alone, in arrival order."""
    return {m: world.answer(m.names) for m in members}


def bound(n: int) -> int:
    return 1 + n + 2 * math.ceil(math.log2(n))


NAMES = [f"run-{i}" for i in range(8)]
names_st = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map(tuple)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lists=st.lists(names_st, min_size=1, max_size=16),
    bad=st.frozensets(st.sampled_from(NAMES)),
    refuse_all=st.booleans(),
    names_first_only=st.booleans(),
    idempotent=st.booleans(),
    max_names=st.none() | st.integers(1, 6),
)
def test_every_caller_gets_its_own_alone_answer_and_calls_stay_within_budget(
    lists: list[tuple[str, ...]],
    bad: frozenset[str],
    refuse_all: bool,
    names_first_only: bool,
    idempotent: bool,
    max_names: int | None,
) -> None:
    endpoint = "runs/delete" if idempotent else "secrets/delete"
    # The batcher shares one future among equal members, so members are distinct.
    members = list(dict.fromkeys(Member(n, 0 if idempotent else i) for i, n in enumerate(lists)))
    existing = None if idempotent else set(NAMES[:6])  # the last two never existed
    world = FakeUpstream(bad, refuse_all, names_first_only, set(existing) if existing else None)
    expected = alone(world, members)

    fake = FakeUpstream(bad, refuse_all, names_first_only, existing)
    got, _ = asyncio.run(fly(fake, endpoint, members, max_names))

    assert got == expected
    n = len(members)
    rounds = [members] if idempotent else rounds_of(members)
    forced = sum(len(chunks(r, max_names)) for r in rounds) - len(rounds)
    assert len(fake.calls) <= bound(n) + forced
    if max_names is not None:
        assert all(len(c) <= max_names or c in [list(m.names) for m in members] for c in fake.calls)
    if idempotent and max_names is None:
        failing = [m for m in members if not expected[m].ok]  # type: ignore[union-attr]
        if refuse_all:
            assert len(fake.calls) <= 3
        elif len(failing) == 1:
            assert len(fake.calls) <= 1 + 2 * math.ceil(math.log2(n))
        elif not failing:
            assert len(fake.calls) == 1


@pytest.mark.parametrize("callers", [2, 16, 40])
async def test_a_refusal_the_same_for_every_member_costs_three_calls(callers: int) -> None:
    fake = FakeUpstream(refuse_all=True)
    members = [Member((f"r{i}",)) for i in range(callers)]
    got, _ = await fly(fake, "runs/stop", members)
    assert set(got) == set(members)
    assert {(o.status, o.body) for o in got.values()} == {(400, REFUSAL)}  # type: ignore[union-attr]
    assert len(fake.calls) == 3  # pass-through would make `callers` calls


async def test_the_good_callers_are_answered_before_the_bad_branch_finishes() -> None:
    # 32 callers, one bad: the bad branch is held in the air while the rest are answered.
    release = asyncio.Event()
    fake = FakeUpstream(bad=frozenset({"r27"}))
    members = [Member((f"r{i}",)) for i in range(32)]
    got: dict[Member, Outcome | BaseException] = {}

    def resolve(member: Member, outcome: UpstreamReply | BaseException) -> None:
        got[member] = outcome  # type: ignore[assignment]

    async def send(
        target: BatchTarget, names: Sequence[str | int], shared: SharedFields, call_id: str
    ) -> Outcome:
        if len(fake.calls) >= 3 and "r27" in names:  # [r24..r31] and below: held
            fake.calls.append(list(names))
            await release.wait()
            return fake.answer(names)
        return await fake.send(target, names, shared, call_id)

    flight = Flight(send, target("runs/delete"), (), resolve)
    flying = asyncio.ensure_future(flight.run(members))
    for _ in range(50):
        await asyncio.sleep(0)
    # [r0..r31] failed; [r0..r15] and then [r16..r23] came back good; [r24..r31] is held.
    assert list(got) == members[:24], "good callers are answered while the bad branch is held"
    assert all(got[m].ok for m in members[:24])  # type: ignore[union-attr]
    assert not flying.done()
    release.set()
    await flying
    assert set(got) == set(members)
    assert [m for m in members if not got[m].ok] == [Member(("r27",))]  # type: ignore[union-attr]
    assert got[Member(("r27",))].body == b'{"detail":[{"msg":"refused: [\'r27\']"}]}'  # type: ignore[union-attr]


async def test_upstream_failures_are_shared_and_never_resent() -> None:
    for fake in (FakeUpstream(status=500), FakeUpstream(status=403)):
        got, _ = await fly(fake, "runs/delete", [Member(("a",)), Member(("b",))])
        assert {o.status for o in got.values()} == {fake.status}  # type: ignore[union-attr]
        assert len(fake.calls) == 1


async def test_a_send_that_raises_answers_its_callers_with_an_upstream_error() -> None:
    async def broken(*_: object) -> Outcome:
        raise UpstreamTimeout("slow")

    got: dict[Member, UpstreamReply | BaseException] = {}
    members = [Member(("a",)), Member(("b",))]
    await Flight(broken, target("runs/stop"), (), got.__setitem__).run(members)
    assert [type(got[m]) for m in members] == [UpstreamTimeout, UpstreamTimeout]


async def test_max_names_cuts_a_batch_into_calls_in_arrival_order() -> None:
    fake = FakeUpstream()
    members = [Member(("a", "b")), Member(("c",)), Member(("d", "e", "f", "g")), Member(("h",))]
    got, _ = await fly(fake, "runs/stop", members, max_names=3)
    assert fake.calls == [["a", "b", "c"], ["d", "e", "f", "g"], ["h"]]
    assert all(o.ok for o in got.values())  # type: ignore[union-attr]


def test_rounds_put_overlapping_members_in_arrival_order() -> None:
    a, b, c, d = (
        Member(("s1", "s2"), 1),
        Member(("s2", "s3"), 2),
        Member(("s1",), 3),
        Member(("s4",), 4),
    )
    assert rounds_of([a, b, c, d]) == [[a, d], [b, c]]
    same1, same2 = Member(("x",), 5), Member(("x",), 6)
    assert rounds_of([same1, same2]) == [[same1], [same2]]


async def test_the_dispatcher_counts_calls_and_logs_one_line_per_batch() -> None:
    metrics = Metrics()
    fake = FakeUpstream(bad=frozenset({"b"}))
    members = [Member((n,)) for n in "abcd"]
    key = BatchKey("runs/delete", "main", "p" * 64, (), ())
    batch = ClosedBatch(key, target("runs/delete"), members, 5, FlushReason.WINDOW, 0, 0, 0.02)
    answers: dict[Member, UpstreamReply | BaseException] = {}
    await Dispatcher(fake.send, metrics).flush(batch, answers.__setitem__)

    def value(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, {"endpoint": "runs/delete", **labels}) or 0

    assert len(answers) == 4
    assert value("proxy_batch_upstream_calls_total", purpose="batch") == 1
    assert value("proxy_batch_upstream_calls_total", purpose="split") == len(fake.calls) - 1
    assert value("proxy_batch_bisections_total") == 2  # [a b | c d], then [a | b]
    assert value("proxy_batched_requests_total") == 5
    assert value("proxy_batch_flushes_total", reason="window") == 1
