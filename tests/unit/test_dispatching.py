"""Pure parts of the dispatcher: which outcomes are shared, and the ordered rounds of members
for endpoints where a repeated item fails."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.batches import UpstreamReply
from proxy.dispatching import _is_shared, _rounds
from proxy.endpoints import DEFAULT_ENDPOINTS, Member
from proxy.errors import UpstreamTimeout, UpstreamUnavailable

SPECS = {spec.name: spec for spec in DEFAULT_ENDPOINTS}


def reply(status: int) -> UpstreamReply:
    return UpstreamReply(status, CIMultiDictProxy(CIMultiDict()), b"")


@pytest.mark.parametrize(
    ("endpoint", "outcome", "shared"),
    [
        ("runs/stop", reply(200), True),
        ("runs/delete", reply(400), False),  # e.g. one active run: split to find it
        ("runs/delete", reply(401), True),
        ("runs/delete", reply(403), True),  # bad token, not a member: the whole key
        ("runs/delete", reply(404), True),  # no such project
        ("runs/delete", reply(422), False),
        ("runs/delete", reply(500), True),  # never resent: no amplification
        ("runs/delete", reply(503), True),
        ("fleets/delete", reply(403), False),  # may concern one SSH fleet only
        ("fleets/delete", reply(404), True),
        ("runs/stop", UpstreamTimeout("t"), True),
        ("runs/stop", UpstreamUnavailable("u"), True),
    ],
)
def test_which_outcomes_every_caller_shares(endpoint: str, outcome: object, shared: bool) -> None:
    assert _is_shared(outcome, SPECS[endpoint]) is shared  # type: ignore[arg-type]


def test_rounds_put_overlapping_members_in_arrival_order() -> None:
    a, b, c, d = (
        Member(("s1", "s2"), 1),
        Member(("s2", "s3"), 2),
        Member(("s1",), 3),
        Member(("s4",), 4),
    )
    assert _rounds([a, b, c, d]) == [[a, d], [b, c]]
    same1, same2 = Member(("x",), 5), Member(("x",), 6)
    assert _rounds([same1, same2]) == [[same1], [same2]]


names = st.lists(st.sampled_from("abcdef"), min_size=1, max_size=3).map(tuple)


@given(st.lists(names, max_size=12))
def test_rounds_never_repeat_an_item_and_keep_overlaps_in_order(
    lists: list[tuple[str, ...]],
) -> None:
    members = [Member(n, i) for i, n in enumerate(lists)]
    rounds = _rounds(members)
    assert sorted(m for r in rounds for m in r) == sorted(members)
    at = {m: i for i, r in enumerate(rounds) for m in r}
    for r in rounds:
        flat = [n for m in r for n in set(m.names)]
        assert len(flat) == len(set(flat))
    for i, earlier in enumerate(members):
        for later in members[i + 1 :]:
            if set(earlier.names) & set(later.names):
                assert at[earlier] < at[later]
