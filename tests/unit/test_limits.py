"""Admission caps: pending requests in total and per key, and buffered body bytes."""

from __future__ import annotations

from proxy.limits import Limits


def test_admits_until_the_total_pending_cap_then_refuses() -> None:
    limits = Limits(max_pending=2, max_per_key=10, max_bytes=1000)
    assert [limits.admit(key, 1) for key in ("a", "b", "c")] == [None, None, "pending_limit"]
    assert (limits.pending, limits.keys) == (2, 2)


def test_admits_until_the_per_key_cap_while_other_keys_still_get_in() -> None:
    limits = Limits(max_pending=10, max_per_key=2, max_bytes=1000)
    assert [limits.admit("a", 1) for _ in range(3)] == [None, None, "key_limit"]
    assert limits.admit("b", 1) is None
    assert limits.pending == 3


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
    assert (limits.pending, limits.keys) == (0, 0)
    assert limits.admit("a", 10) is None


def test_release_gives_the_place_and_bytes_back() -> None:
    limits = Limits(max_pending=1, max_per_key=1, max_bytes=10)
    assert limits.admit("a", 10) is None
    assert limits.admit("b", 1) == "pending_limit"
    limits.release("a", 10)
    assert limits.admit("b", 10) is None


def test_release_removes_a_key_once_its_count_reaches_zero() -> None:
    limits = Limits(max_pending=10, max_per_key=10, max_bytes=1000)
    limits.admit("a", 5)
    limits.admit("a", 7)
    limits.admit("b", 1)
    limits.release("a", 5)
    assert (limits.pending, limits.keys) == (2, 2)

    limits.release("a", 7)
    limits.release("b", 1)
    assert (limits.pending, limits.keys) == (0, 0)
    assert limits.admit("a", 1000) is None  # the bytes came back too
