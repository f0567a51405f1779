"""What log lines may show of a request: never a query string or userinfo, which can carry
credentials (`?api_key=...`, `http://user:pass@host/`)."""

from __future__ import annotations

import pytest

from proxy.ops.logs import REQUEST, add_request, loggable


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        ("/api/project/main/runs/stop?api_key=secret", "/api/project/main/runs/stop"),
        ("/api/runs/list#token=secret", "/api/runs/list"),
        ("http://user:secret@dstack:3000/api/x?y=1", "http://dstack:3000/api/x"),
        ("user:secret@dstack:443", "dstack:443"),  # CONNECT's authority form
        ("/a/user@b/c", "/a/user@b/c"),  # an @ in a path is not userinfo
        ("*", "*"),
        ("/healthcheck", "/healthcheck"),
    ],
)
def test_targets_are_logged_without_query_fragment_or_userinfo(target: str, shown: str) -> None:
    assert loggable(target) == shown
    assert "secret" not in loggable(target)


def test_the_request_an_event_belongs_to_is_named_by_its_path_only() -> None:
    token = REQUEST.set((1, "POST", "/api/project/main/runs/stop?api_key=secret"))
    try:
        event = add_request(None, "info", {"event": "batch_flushed"})
    finally:
        REQUEST.reset(token)
    assert event["path"] == "/api/project/main/runs/stop"
    assert (event["method"], event["event"]) == ("POST", "batch_flushed")
