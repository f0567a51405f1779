"""The dispatcher's policy through its `send` seam: a recording fake upstream, no HTTP.

The fake answers with dstack's own refusal bytes (docs/dstack-api.md, Refusals of the batchable
endpoints), read from its source for 0.18.40 and 0.22.5: refusals that name the refused item
(all of them, or only the first), refusals that name nothing (the bare 403 for an SSH fleet, the
lock message, the provisioning message), a refusal that echoes the whole list it was sent
(`delete_instances`), names listed in set order (`secrets/delete`), a 5xx that one item causes
and one of the whole server, and the refusals about the key (a bad API version, a role too low),
which the same request with an empty list gets too. A call either succeeds whole or changes
nothing. What each caller must get is what its own request gets when sent alone, one after the
other in arrival order.

Call bounds, for N distinct callers (issue 7's in brackets, where the probe changed them): all
succeed, 1; a refusal or a 5xx about the key (the probe gets it too), 2 [3]; one failing
caller, 2 + 2·ceil(log2 N) [1 + 2·ceil(log2 N)]; any pattern, including the new ones (refusals
naming nothing, echoing the list, in set order, a 5xx one item causes),
2 + N + 2·ceil(log2 N) [1 + N + 2·ceil(log2 N)], plus the calls `max_names` forces.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.batching.batcher import ClosedBatch, FlushReason
from proxy.batching.batches import (
    BatchKey,
    BatchTarget,
    Member,
    Outcome,
    SharedFields,
    UpstreamReply,
    chunks,
    rounds_of,
)
from proxy.batching.dispatching import Dispatcher
from proxy.batching.endpoints import DEFAULT_ENDPOINTS
from proxy.batching.flight import Flight
from proxy.errors import UpstreamTimeout
from proxy.ops.metrics import Metrics
from tests.support.modes import examples

SPECS = {spec.name: spec for spec in DEFAULT_ENDPOINTS}
# dstack's bytes (0.22.5 unless said): a key-wide refusal first, then per-item ones.
BAD_VERSION = b'{"detail":[{"msg":"Invalid version: garbage!","code":null}]}'
ROLE_TOO_LOW = b'{"detail":{"msg":"Access denied","code":null}}'  # the project dependency
ACCESS_DENIED = b'{"msg":"Access denied","code":null}'  # raised in the handler: one SSH fleet
SERVER_ERROR = b"Internal Server Error"  # starlette's plain-text 500
LOCKED = "Failed to delete volumes: volumes are being processed currently. Try again later."
PROVISIONING = "Failed to delete instance while the job is provisioning."
# What makes one item fail, and how dstack says so.
KINDS = ("ok", "active", "in_use", "ssh", "locked", "provisioning", "busy_instance", "boom")
KEY_WIDE = (None, "version", "role", "down")


def reply(status: int, body: bytes) -> UpstreamReply:
    return UpstreamReply(status, CIMultiDictProxy(CIMultiDict()), body)


def refusal(msg: str, code: str = "error") -> UpstreamReply:
    return reply(400, orjson.dumps({"detail": [{"msg": msg, "code": code}]}))


def target(endpoint: str) -> BatchTarget:
    return BatchTarget(SPECS[endpoint], URL("http://upstream.invalid/x"), CIMultiDict())


@dataclass
class FakeDstack:
    """One batchable endpoint of dstack, answering as its handler does, in its order of checks:
    the key (version, then role), a failing server, an item that breaks the SQL (a 5xx), a lock,
    an SSH fleet the caller may not manage, items in use, a placeholder instance, unknown
    secrets. `kinds` maps a name to what makes it fail (absent: it deletes fine). Where the
    endpoint is not idempotent (secrets), names must exist (`existing`) and are deleted."""

    kinds: dict[str | int, str] = field(default_factory=dict)
    key_wide: str | None = None
    existing: set[str] | None = None
    salt: int = 0  # the order of a set: the same set, the same order, but not arrival order
    calls: list[list[str | int]] = field(default_factory=list)

    async def send(
        self, target: BatchTarget, names: Sequence[str | int], shared: SharedFields, call_id: str
    ) -> Outcome:
        assert call_id
        self.calls.append(list(names))
        await asyncio.sleep(0)  # calls of one flight overlap
        return self.answer(names)

    def answer(self, names: Sequence[str | int]) -> UpstreamReply:
        if self.key_wide == "version":  # a middleware, before anything else
            return reply(400, BAD_VERSION)
        if self.key_wide == "role":
            return reply(403, ROLE_TOO_LOW)
        if self.key_wide == "down":
            return reply(500, SERVER_ERROR)
        if self.key_wide == "ssh_fleet":  # delete_instances of an SSH fleet: its name is shared
            return reply(403, ACCESS_DENIED)
        of = {
            kind: [n for n in dict.fromkeys(names) if self.kinds.get(n) == kind] for kind in KINDS
        }
        if of["boom"]:  # e.g. an instance number too large for SQLite: the first SELECT fails
            return reply(500, SERVER_ERROR)
        if of["locked"]:  # names nothing: volumes, gateways, fleets
            return refusal(LOCKED)
        if of["ssh"]:  # names nothing: fleets/delete by a member, SSH fleets admin-only
            return reply(403, ACCESS_DENIED)
        if of["active"]:  # every offender: runs/delete
            return refusal(f"Cannot delete active runs: {of['active']}")
        if of["in_use"]:  # the first offender only: fleets, volumes
            return refusal(f"Failed to delete fleet {of['in_use'][0]}. Fleet is in use.")
        if of["busy_instance"]:  # echoes the whole list it was sent: delete_instances
            return refusal(
                f"Failed to delete fleet f instances {list(names)}. Fleet instances are in use."
            )
        if of["provisioning"]:  # names nothing: delete_instances, fleets (0.22.5)
            return refusal(PROVISIONING)
        if self.existing is not None:
            missing = {str(n) for n in names} - self.existing
            if missing:  # built from a set: not in the order sent
                shown = sorted(missing, key=lambda n: hash((self.salt, n)))
                return refusal(f"Secrets not found: {', '.join(shown)}", "resource_not_exists")
            self.existing.difference_update(str(n) for n in names)
        return reply(200, b"null")


async def fly(
    fake: FakeDstack,
    endpoint: str,
    members: Sequence[Member],
    max_names: int | None = None,
) -> tuple[dict[Member, Outcome | BaseException], Flight]:
    got: dict[Member, Outcome | BaseException] = {}

    def resolve(member: Member, outcome: UpstreamReply | BaseException) -> None:
        assert member not in got, "a member answered twice"
        got[member] = outcome

    flight = Flight(fake.send, target(endpoint), (), resolve, max_names=max_names)
    await flight.run(members)
    return got, flight


def alone(world: FakeDstack, members: Sequence[Member]) -> dict[Member, Outcome]:
    """Each member's answer when its request is sent alone, in arrival order."""
    return {m: world.answer(m.names) for m in members}


def bound(n: int) -> int:
    """The flight's budget without max_names: the batch call, the probe, and bisection."""
    return 2 + n + 2 * math.ceil(math.log2(n))


# What can make one item of each endpoint fail (dstack's source, 0.18.40 and 0.22.5), and the
# refusals about the key it can get. On delete_instances an SSH fleet is the shared `name`, so
# its 403 is about the key there.
ENDPOINTS = {
    "runs/stop": (("ok", "boom"), KEY_WIDE),
    "runs/delete": (("ok", "active", "boom"), KEY_WIDE),
    "volumes/delete": (("ok", "locked", "in_use", "boom"), KEY_WIDE),
    "fleets/delete": (("ok", "locked", "ssh", "in_use", "provisioning", "boom"), KEY_WIDE),
    "fleets/delete_instances": (
        ("ok", "locked", "provisioning", "busy_instance", "boom"),
        (*KEY_WIDE, "ssh_fleet"),
    ),
    "secrets/delete": (("ok", "boom"), KEY_WIDE),
}


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[str, list[Member], FakeDstack, int | None]:
    endpoint = draw(st.sampled_from(sorted(ENDPOINTS)))
    kinds, key_wides = ENDPOINTS[endpoint]
    universe: list[str | int] = (
        list(range(8)) if endpoint == "fleets/delete_instances" else [f"n{i}" for i in range(8)]
    )
    # Mostly items that delete fine, so failures are sparse as well as dense.
    kind_of = draw(
        st.fixed_dictionaries({n: st.sampled_from(("ok", "ok", "ok", *kinds)) for n in universe})
    )
    lists = draw(
        st.lists(
            st.lists(st.sampled_from(universe), min_size=1, max_size=3), min_size=1, max_size=16
        )
    )
    idempotent = SPECS[endpoint].idempotent
    # The batcher shares one future among equal members, so members are distinct.
    members = list(
        dict.fromkeys(
            Member(tuple(n), 0 if idempotent else i)  # type: ignore[arg-type]
            for i, n in enumerate(lists)
        )
    )
    fake = FakeDstack(
        {n: k for n, k in kind_of.items() if k != "ok"},
        draw(st.sampled_from(key_wides)),
        None if idempotent else {str(n) for n in universe[:6]},  # the last two never existed
        draw(st.integers(0, 3)),
    )
    return endpoint, members, fake, draw(st.none() | st.integers(1, 6))


def test_the_fake_answers_an_empty_list_as_dstack_does() -> None:
    """The probe's premise, checked on the real servers (docs/dstack-api.md): an empty list
    gets the refusals about the key and otherwise 200, whatever the names would have got."""
    assert FakeDstack({"a": "ssh", "b": "locked", "c": "boom"}).answer([]).status == 200
    assert FakeDstack(existing=set()).answer([]).status == 200
    for key_wide, status in (("version", 400), ("role", 403), ("down", 500), ("ssh_fleet", 403)):
        assert FakeDstack(key_wide=key_wide).answer([]).status == status


@examples(ci=400, long=4000)
@given(scenario=scenarios())
def test_every_caller_gets_its_own_alone_answer_and_calls_stay_within_budget(
    scenario: tuple[str, list[Member], FakeDstack, int | None],
) -> None:
    endpoint, members, fake, max_names = scenario
    world = FakeDstack(
        fake.kinds, fake.key_wide, set(fake.existing) if fake.existing else fake.existing, fake.salt
    )
    expected = alone(world, members)

    got, flight = asyncio.run(fly(fake, endpoint, members, max_names))

    assert got == expected
    n = len(members)
    idempotent = SPECS[endpoint].idempotent
    rounds = [members] if idempotent else rounds_of(members)
    forced = sum(len(chunks(r, max_names)) for r in rounds) - len(rounds)
    assert len(fake.calls) <= bound(n) + forced
    assert fake.calls.count([]) == flight.calls["probe"] <= 1  # one probe at most, naming nothing
    if max_names is not None:
        assert all(len(c) <= max_names or c in [list(m.names) for m in members] for c in fake.calls)
    if idempotent and max_names is None:
        failing = [m for m in members if not expected[m].ok]  # type: ignore[union-attr]
        if n == 1 or not failing:
            assert len(fake.calls) == 1
        elif fake.key_wide is not None:  # about the key: the call and the probe, no names resent
            assert len(fake.calls) <= 2
        elif len(failing) == 1:  # the call, the probe, then two calls per level
            assert len(fake.calls) <= 2 + 2 * math.ceil(math.log2(n))


@pytest.mark.parametrize("callers", [2, 16, 40])
@pytest.mark.parametrize(
    ("endpoint", "key_wide", "status", "calls"),
    [
        ("runs/stop", "version", 400, 2),  # confirmed by the probe
        ("runs/stop", "role", 403, 1),  # on runs only the key's checks give a 403
        ("fleets/delete", "role", 403, 2),  # ... on fleets an SSH fleet can: the probe decides
        ("fleets/delete_instances", "ssh_fleet", 403, 2),  # the fleet is part of the key
        ("runs/delete", "down", 500, 2),  # a server-wide failure: never resent to the names
    ],
)
async def test_a_failure_about_the_key_is_shared_after_one_probe(
    callers: int, endpoint: str, key_wide: str, status: int, calls: int
) -> None:
    fake = FakeDstack(key_wide=key_wide)
    names: list[str | int] = (
        list(range(callers)) if "instances" in endpoint else [f"r{i}" for i in range(callers)]
    )
    members = [Member((name,)) for name in names]  # type: ignore[arg-type]
    got, _ = await fly(fake, endpoint, members)
    assert set(got) == set(members)
    assert {o.status for o in got.values()} == {status}  # type: ignore[union-attr]
    assert len(fake.calls) == calls  # pass-through would make `callers` calls
    assert fake.calls[1:] == [[]] * (calls - 1)


@pytest.mark.parametrize(
    ("kind", "status"), [("ssh", 403), ("locked", 400), ("provisioning", 400), ("boom", 500)]
)
async def test_a_failure_that_names_nothing_reaches_only_the_callers_it_concerns(
    kind: str, status: int
) -> None:
    # Issue 15: three SSH fleets among six, deleted by a member. Before, all six got the 403.
    fake = FakeDstack({f"f{i}": kind for i in (0, 2, 4)})
    members = [Member((f"f{i}",)) for i in range(6)]
    got, _ = await fly(fake, "fleets/delete", members)
    assert [o.status for o in (got[m] for m in members)] == [status, 200] * 3  # type: ignore[union-attr]
    assert fake.calls[1] == []  # the probe, which got 200: the failure depends on the names
    assert len(fake.calls) <= bound(6)


async def test_the_good_callers_are_answered_before_the_bad_branch_finishes() -> None:
    # 32 callers, one bad: the bad branch is held in the air while the rest are answered.
    release = asyncio.Event()
    fake = FakeDstack({"r27": "active"})
    members = [Member((f"r{i}",)) for i in range(32)]
    got: dict[Member, Outcome | BaseException] = {}

    def resolve(member: Member, outcome: UpstreamReply | BaseException) -> None:
        got[member] = outcome

    async def send(
        target: BatchTarget, names: Sequence[str | int], shared: SharedFields, call_id: str
    ) -> Outcome:
        if len(fake.calls) >= 4 and "r27" in names:  # [r24..r31] and below: held
            fake.calls.append(list(names))
            await release.wait()
            return fake.answer(names)
        return await fake.send(target, names, shared, call_id)

    flight = Flight(send, target("runs/delete"), (), resolve)
    flying = asyncio.ensure_future(flight.run(members))
    for _ in range(50):
        await asyncio.sleep(0)
    # [r0..r31] failed, the probe [] did not; [r0..r15], then [r16..r23] came back good;
    # [r24..r31] is held.
    assert list(got) == members[:24], "good callers are answered while the bad branch is held"
    assert all(got[m].ok for m in members[:24])  # type: ignore[union-attr]
    assert not flying.done()
    release.set()
    await flying
    assert set(got) == set(members)
    assert [m for m in members if not got[m].ok] == [Member(("r27",))]  # type: ignore[union-attr]
    assert got[Member(("r27",))].body == (  # type: ignore[union-attr]
        b'{"detail":[{"msg":"Cannot delete active runs: [\'r27\']","code":"error"}]}'
    )


async def test_a_server_wide_5xx_is_shared_and_an_item_caused_one_is_settled_per_caller() -> None:
    down = FakeDstack(key_wide="down")
    got, _ = await fly(down, "runs/delete", [Member(("a",)), Member(("b",))])
    assert {o.status for o in got.values()} == {500}  # type: ignore[union-attr]
    assert down.calls == [["a", "b"], []]  # the probe failed too: no name is resent

    one = FakeDstack({"b": "boom"})
    got, _ = await fly(one, "fleets/delete_instances", [Member(("a",)), Member(("b",))])
    assert [got[Member((n,))].status for n in "ab"] == [200, 500]  # type: ignore[union-attr]
    assert one.calls == [["a", "b"], [], ["a"], ["b"]]


async def test_a_status_only_the_key_can_cause_is_shared_without_a_probe() -> None:
    fake = FakeDstack(key_wide="role")
    got, _ = await fly(fake, "runs/delete", [Member(("a",)), Member(("b",))])
    assert {o.status for o in got.values()} == {403}  # type: ignore[union-attr]
    assert len(fake.calls) == 1


async def test_an_endpoint_without_a_no_op_probe_bisects_every_failure() -> None:
    fake = FakeDstack(key_wide="version")
    spec = dataclasses.replace(SPECS["runs/stop"], probe=False)
    got: dict[Member, UpstreamReply | BaseException] = {}
    members = [Member((f"r{i}",)) for i in range(4)]
    await Flight(
        fake.send, BatchTarget(spec, URL("http://u.invalid/x"), CIMultiDict()), (), got.__setitem__
    ).run(members)
    assert {o.status for o in got.values()} == {400}  # type: ignore[union-attr]
    assert [] not in fake.calls and len(fake.calls) == 7  # down to each caller alone


async def test_a_send_that_raises_answers_its_callers_with_an_upstream_error() -> None:
    async def broken(*_: object) -> Outcome:
        raise UpstreamTimeout("slow")

    got: dict[Member, UpstreamReply | BaseException] = {}
    members = [Member(("a",)), Member(("b",))]
    await Flight(broken, target("runs/stop"), (), got.__setitem__).run(members)
    assert [type(got[m]) for m in members] == [UpstreamTimeout, UpstreamTimeout]


async def test_max_names_cuts_a_batch_into_calls_in_arrival_order() -> None:
    fake = FakeDstack()
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
    fake = FakeDstack({"b": "active"})
    members = [Member((n,)) for n in "abcd"]
    key = BatchKey("runs/delete", "main", "p" * 64, (), ())
    batch = ClosedBatch(key, target("runs/delete"), members, 5, FlushReason.WINDOW, 0, 0, 0.02)
    answers: dict[Member, UpstreamReply | BaseException] = {}
    await Dispatcher(fake.send, metrics).flush(batch, answers.__setitem__)

    def value(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, {"endpoint": "runs/delete", **labels}) or 0

    assert len(answers) == 4
    assert value("dstack_coalescer_batch_upstream_calls_total", purpose="batch") == 1
    assert value("dstack_coalescer_batch_upstream_calls_total", purpose="probe") == 1
    assert (
        value("dstack_coalescer_batch_upstream_calls_total", purpose="split") == len(fake.calls) - 2
    )
    assert value("dstack_coalescer_batch_bisections_total") == 2  # [a b | c d], then [a | b]
    assert value("dstack_coalescer_batched_requests_total") == 5
    assert value("dstack_coalescer_batch_flushes_total", reason="window") == 1
