"""Admission caps: pending requests in total and per key, and buffered body bytes."""

from __future__ import annotations

from proxy.intake.fit import BypassReason
from proxy.intake.limits import Limits


def test_admits_until_the_total_pending_cap_then_refuses() -> None:
    limits = Limits(max_pending=2, max_per_key=10, max_bytes=1000)
    assert [limits.admit(key, 1) for key in ("a", "b", "c")] == [None, None, "pending_limit"]


def test_admits_until_the_per_key_cap_while_other_keys_still_get_in() -> None:
    limits = Limits(max_pending=10, max_per_key=2, max_bytes=1000)
    assert [limits.admit("a", 1) for _ in range(3)] == [None, None, "key_limit"]
    assert limits.admit("b", 1) is None
    assert limits.admit("b", 1) is None
    assert limits.admit("c", 1) is None  # the total cap is 10: pending counted 5 so far


def test_refuses_a_body_that_would_take_the_buffered_bytes_past_the_cap() -> None:
    limits = Limits(max_pending=10, max_per_key=10, max_bytes=100)
    assert limits.admit("a", 60) is None
    assert limits.admit("a", 41) == "bytes_limit"
    assert limits.admit("b", 40) is None  # exactly at the cap is fine
    assert limits.admit("c", 1) == "bytes_limit"
    assert limits.admit("c", 0) is None


def test_a_refused_request_takes_nothing() -> None:
    limits = Limits(max_pending=1, max_per_key=1, max_bytes=10)
    assert limits.admit("a", 11) == "bytes_limit"
    assert limits.admit("a", 10) is None  # the refusal took no place, key place or byte


def test_release_gives_the_place_and_bytes_back() -> None:
    limits = Limits(max_pending=1, max_per_key=1, max_bytes=10)
    assert limits.admit("a", 10) is None
    assert limits.admit("b", 1) == "pending_limit"
    limits.release("a", 10)
    assert limits.admit("b", 10) is None


def test_release_gives_each_key_its_places_back_one_by_one() -> None:
    limits = Limits(max_pending=3, max_per_key=2, max_bytes=1000)
    limits.admit("a", 5)
    limits.admit("a", 7)
    limits.admit("b", 1)
    assert limits.admit("c", 1) == "pending_limit"
    limits.release("a", 5)
    assert limits.admit("a", 1) is None  # one of a's two places came back
    assert limits.admit("a", 1) in ("key_limit", "pending_limit")

    for key, size in (("a", 7), ("a", 1), ("b", 1)):
        limits.release(key, size)
    assert [limits.admit("a", 500), limits.admit("a", 500)] == [None, None]  # bytes came back


def test_a_refusal_is_the_bypass_reason_the_intake_counts() -> None:
    limits = Limits(max_pending=1, max_per_key=1, max_bytes=10)
    assert limits.admit("a", 1) is None
    assert limits.admit("a", 1) is BypassReason.PENDING_LIMIT
