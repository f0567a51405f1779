"""Pure parts of the dispatcher: which outcomes are shared, and the ordered rounds of members
for endpoints where a repeated item fails."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.batches import Member
from proxy.dispatching import rounds_of as _rounds


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
