"""Header policy tables: hop-by-hop stripping both ways, forwarding headers, Location rewriting."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.edge.headers import (
    HOP_BY_HOP_HEADERS,
    client_response_headers,
    connection_tokens,
    rewrite_location,
    upstream_request_headers,
)

Pairs = list[tuple[str, str]]


def headers(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


def to_upstream(
    pairs: Pairs,
    *,
    trusted_peer: bool = False,
    body_rewritten: bool = False,
    remote: str | None = "10.0.0.9",
) -> Pairs:
    out = upstream_request_headers(
        headers(*pairs),
        remote=remote,
        scheme="http",
        trusted_peer=trusted_peer,
        body_rewritten=body_rewritten,
    )
    return out


def to_client(pairs: Pairs) -> Pairs:
    return client_response_headers(headers(*pairs))


HOP_BY_HOP = [
    "Connection",
    "Keep-Alive",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Trailers",
    "Transfer-Encoding",
    "Upgrade",
    "Proxy-Authenticate",
    "Proxy-Authorization",
]


def test_the_hop_by_hop_set_is_exactly_the_rfc_list_plus_common_extras() -> None:
    assert {h.lower() for h in HOP_BY_HOP} == HOP_BY_HOP_HEADERS


@pytest.mark.parametrize("name", [*HOP_BY_HOP, "transfer-encoding", "KEEP-ALIVE"])
@pytest.mark.parametrize("leg", ["request", "response"])
def test_hop_by_hop_headers_are_stripped_on_both_legs(name: str, leg: str) -> None:
    pairs = [("Accept", "*/*"), (name, "x"), ("X-Kept", "1")]
    out = to_upstream(pairs) if leg == "request" else to_client(pairs)
    assert name.lower() not in {n.lower() for n, _ in out}
    assert ("Accept", "*/*") in out and ("X-Kept", "1") in out


@pytest.mark.parametrize(
    ("connection", "dropped"),
    [
        pytest.param([("Connection", "X-Secret")], {"x-secret"}, id="one name"),
        pytest.param([("Connection", "x-SECRET")], {"x-secret"}, id="other case"),
        pytest.param(
            [("Connection", "keep-alive, X-Secret ,X-Other")],
            {"x-secret", "x-other"},
            id="comma list",
        ),
        pytest.param(
            [("Connection", "X-Secret"), ("connection", "X-Other")],
            {"x-secret", "x-other"},
            id="two Connection headers",
        ),
        pytest.param([("Connection", " , ,X-Other,")], {"x-other"}, id="empty list elements"),
    ],
)
@pytest.mark.parametrize("leg", ["request", "response"])
def test_headers_named_in_connection_are_stripped(
    connection: Pairs, dropped: set[str], leg: str
) -> None:
    pairs = [*connection, ("X-Secret", "s"), ("X-Other", "o"), ("X-Kept", "k")]
    out = to_upstream(pairs) if leg == "request" else to_client(pairs)
    names = {n.lower() for n, _ in out}
    assert not names & (dropped | {"connection"})
    assert "x-kept" in names
    assert {"x-secret", "x-other"} - dropped <= names


def test_connection_tokens_lists_every_named_header_lower_cased() -> None:
    assert connection_tokens(headers(("Connection", "Keep-Alive, X-A"), ("CONNECTION", "x-b"))) == {
        "keep-alive",
        "x-a",
        "x-b",
    }


def test_repeated_set_cookie_headers_survive_as_separate_entries() -> None:
    out = to_client([("Set-Cookie", "a=1"), ("Content-Type", "text/plain"), ("Set-Cookie", "b=2")])
    assert [v for n, v in out if n == "Set-Cookie"] == ["a=1", "b=2"]


def test_client_response_headers_also_drop_the_extra_names_given() -> None:
    out = client_response_headers(
        headers(("Content-Length", "3"), ("ETag", "x")), also=["content-LENGTH"]
    )
    assert out == [("ETag", "x")]


@pytest.mark.parametrize(
    ("pairs", "trusted_peer", "forwarded"),
    [
        pytest.param(
            [("Host", "proxy.example")],
            False,
            {
                "X-Forwarded-For": "10.0.0.9",
                "X-Forwarded-Proto": "http",
                "X-Forwarded-Host": "proxy.example",
            },
            id="new chain",
        ),
        pytest.param(
            [
                ("Host", "proxy.example"),
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "forged.example"),
                ("Forwarded", "for=6.6.6.6"),
                ("X-Real-IP", "6.6.6.6"),
            ],
            False,
            {
                "X-Forwarded-For": "10.0.0.9",
                "X-Forwarded-Proto": "http",
                "X-Forwarded-Host": "proxy.example",
            },
            id="client-supplied values dropped from an untrusted peer",
        ),
        pytest.param(
            [
                ("Host", "inner.example"),
                ("X-Forwarded-For", "1.1.1.1, 2.2.2.2"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "outer.example"),
            ],
            True,
            {
                "X-Forwarded-For": "1.1.1.1, 2.2.2.2, 10.0.0.9",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "outer.example",
            },
            id="trusted peer's chain extended",
        ),
        pytest.param(
            [("Host", "inner.example")],
            True,
            {
                "X-Forwarded-For": "10.0.0.9",
                "X-Forwarded-Proto": "http",
                "X-Forwarded-Host": "inner.example",
            },
            id="trusted peer without forwarding headers",
        ),
        pytest.param(
            [
                ("Host", "proxy.example"),
                ("X-Forwarded-For", "1.1.1.1"),
                ("X-Forwarded-For", "2.2.2.2"),
            ],
            True,
            {
                "X-Forwarded-For": "1.1.1.1, 2.2.2.2, 10.0.0.9",
                "X-Forwarded-Proto": "http",
                "X-Forwarded-Host": "proxy.example",
            },
            # RFC 9110 §5.3: repeated fields mean one comma-joined list; a regression test
            # for reading only the first line, which lost the peer's second hop.
            id="trusted peer's repeated X-Forwarded-For",
        ),
    ],
)
def test_forwarding_headers_are_rebuilt_for_this_hop(
    pairs: Pairs, trusted_peer: bool, forwarded: dict[str, str]
) -> None:
    out = to_upstream(pairs, trusted_peer=trusted_peer)
    rebuilt = [(n, v) for n, v in out if n.lower().startswith("x-forwarded-")]
    assert sorted(rebuilt) == sorted(forwarded.items())
    assert not {"host", "forwarded", "x-real-ip"} & {n.lower() for n, _ in out}


def test_no_x_forwarded_for_is_invented_without_a_remote_address() -> None:
    out = to_upstream([("Host", "h"), ("X-Forwarded-For", "6.6.6.6")], remote=None)
    assert "X-Forwarded-For" not in dict(out)


@pytest.mark.parametrize(
    ("body_rewritten", "kept"),
    [(False, {"content-length", "content-encoding"}), (True, set())],
)
def test_a_rewritten_body_drops_content_length_and_content_encoding(
    body_rewritten: bool, kept: set[str]
) -> None:
    pairs = [("Content-Length", "12"), ("Content-Encoding", "gzip"), ("Content-Type", "x/y")]
    names = {n.lower() for n, _ in to_upstream(pairs, body_rewritten=body_rewritten)}
    assert names & {"content-length", "content-encoding"} == kept
    assert "content-type" in names


def test_expect_is_not_sent_upstream() -> None:
    assert "expect" not in {n.lower() for n, _ in to_upstream([("Expect", "100-continue")])}


def test_end_to_end_request_headers_pass_in_order_with_repeats() -> None:
    pairs = [
        ("Authorization", "Bearer t"),
        ("Cookie", "a=1"),
        ("X-API-Version", "1"),
        ("Accept", "a"),
        ("Accept", "b"),
    ]
    assert to_upstream(pairs)[: len(pairs)] == pairs


UPSTREAM = "http://127.0.0.1:3000"
CLIENT = "https://proxy.example"


@pytest.mark.parametrize(
    ("location", "rewritten"),
    [
        (f"{UPSTREAM}/login?next=/a", f"{CLIENT}/login?next=/a"),
        (f"{UPSTREAM}/", f"{CLIENT}/"),
        (UPSTREAM, CLIENT),
        ("/relative/path", "/relative/path"),
        ("http://other.example/x", "http://other.example/x"),
        (f"{UPSTREAM}0/x", f"{UPSTREAM}0/x"),  # port 30000, not the upstream
        (f"{UPSTREAM}.evil.example/x", f"{UPSTREAM}.evil.example/x"),
        ("https://127.0.0.1:3000/x", "https://127.0.0.1:3000/x"),
    ],
)
def test_rewrite_location_points_only_upstream_origin_redirects_back_at_the_proxy(
    location: str, rewritten: str
) -> None:
    assert rewrite_location(location, upstream_origin=UPSTREAM, client_origin=CLIENT) == rewritten
