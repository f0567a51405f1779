"""Header policy for both legs of the proxy, one function per leg: `upstream_request_headers`
and `client_response_headers` (hop-by-hop stripping both ways, forwarding headers believed only
from trusted peers), and `rewrite_location`.

Pure functions over multidicts; no I/O.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import Final

from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy

# RFC 9110 §7.6.1 and §7.8: these describe one connection, never the message. "Trailers" is the
# RFC 2616 spelling some old peers still send; Proxy-Connection is non-standard but common.
HOP_BY_HOP_HEADERS: Final = frozenset(
    h.lower()
    for h in (
        hdrs.CONNECTION,
        hdrs.KEEP_ALIVE,
        "Proxy-Connection",
        hdrs.TE,
        hdrs.TRAILER,
        "Trailers",
        hdrs.TRANSFER_ENCODING,
        hdrs.UPGRADE,
        hdrs.PROXY_AUTHENTICATE,
        hdrs.PROXY_AUTHORIZATION,
    )
)

# Hop-by-hop, and more never copied to the upstream: aiohttp's server already answered Expect
# (100 Continue), Host is set from the configured upstream, and the forwarding headers are
# rebuilt by `forwarding_headers`.
_REQUEST_DROPPED: Final = HOP_BY_HOP_HEADERS | frozenset(
    h.lower()
    for h in (
        hdrs.EXPECT,
        hdrs.HOST,
        hdrs.FORWARDED,
        hdrs.X_FORWARDED_FOR,
        hdrs.X_FORWARDED_PROTO,
        hdrs.X_FORWARDED_HOST,
        "X-Real-IP",
    )
)

# ... and, when the body sent is not the one the client framed, its length and encoding.
_REWRITTEN_BODY_DROPPED: Final = _REQUEST_DROPPED | {"content-length", "content-encoding"}

# Headers that only describe a WebSocket handshake; each leg negotiates its own.
WEBSOCKET_HANDSHAKE_HEADERS: Final = frozenset(
    h.lower()
    for h in (
        hdrs.SEC_WEBSOCKET_KEY,
        hdrs.SEC_WEBSOCKET_VERSION,
        hdrs.SEC_WEBSOCKET_EXTENSIONS,
        hdrs.SEC_WEBSOCKET_PROTOCOL,
        hdrs.SEC_WEBSOCKET_ACCEPT,
    )
)

HeadersIn = CIMultiDictProxy[str] | CIMultiDict[str]

# Headers aiohttp's client would invent when a request lacks them; the proxy's sessions skip
# them, so the upstream gets what the client sent (and never gzip a client did not ask for).
SKIP_AUTO_HEADERS: Final = (hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.USER_AGENT, hdrs.CONTENT_TYPE)


def connection_tokens(headers: HeadersIn) -> frozenset[str]:
    """Header names listed in every `Connection` header (RFC 9110 §7.6.1), lower-cased."""
    return frozenset(
        token.strip().lower()
        for value in headers.getall(hdrs.CONNECTION, ())
        for token in value.split(",")
        if token.strip()
    )


def client_response_headers(
    headers: HeadersIn, *, also: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """Headers to send to the client for an upstream response, as pairs (framing is left to
    aiohttp): without hop-by-hop ones, those named in `Connection`, and `also`.

    Repeated headers (two `Set-Cookie`) are kept as separate entries."""
    dropped = HOP_BY_HOP_HEADERS.union(h.lower() for h in also) if also else HOP_BY_HOP_HEADERS
    return _without(headers, dropped)


def _without(headers: HeadersIn, dropped: frozenset[str]) -> list[tuple[str, str]]:
    """`headers` but those named (lower-case) in `dropped` or in `Connection`."""
    if hdrs.CONNECTION in headers:
        dropped = dropped | connection_tokens(headers)
    return [(name, value) for name, value in headers.items() if name.lower() not in dropped]


@functools.lru_cache(maxsize=64)
def _networks(
    trusted: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(t) for t in trusted)


@functools.lru_cache(maxsize=4096)
def _in_networks(remote: str, trusted: tuple[str, ...]) -> bool:
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:  # a Unix socket peer, or none
        return False
    return any(address in network for network in _networks(trusted))


def is_trusted(remote: str | None, trusted: tuple[str, ...]) -> bool:
    """Whether a peer address is one of `trusted_proxies`' addresses or inside one of its
    networks. Peers are few (the front's pods), so each answer is remembered."""
    if not trusted or remote is None:
        return False
    return remote in trusted or _in_networks(remote, trusted)


def upstream_request_headers(
    headers: HeadersIn,
    *,
    remote: str | None,
    scheme: str,
    trusted_peer: bool = False,
    body_rewritten: bool = False,
) -> list[tuple[str, str]]:
    """Headers to send upstream for a client request, as pairs: aiohttp's client copies
    whatever it is given into its own multidict, so nothing is gained by building one here.

    `body_rewritten` means the body bytes sent upstream differ from the ones the client framed
    (a batch call's body, built by the proxy), so the length and encoding no longer hold.
    """
    out = _without(headers, _REWRITTEN_BODY_DROPPED if body_rewritten else _REQUEST_DROPPED)
    out += forwarding_headers(headers, remote=remote, scheme=scheme, trusted_peer=trusted_peer)
    return out


def forwarding_headers(
    headers: HeadersIn, *, remote: str | None, scheme: str, trusted_peer: bool
) -> list[tuple[str, str]]:
    """`X-Forwarded-For/-Proto/-Host` for this hop.

    Client-supplied values are believed only from a configured trusted peer (another proxy in
    front of this one); otherwise a new chain starts here, so clients cannot forge their address.
    """
    out: list[tuple[str, str]] = []
    if trusted_peer:
        # Repeated header lines are one comma-joined list (RFC 9110 §5.3).
        chain = ", ".join(headers.getall(hdrs.X_FORWARDED_FOR, ()))
        if remote:
            out.append((hdrs.X_FORWARDED_FOR, f"{chain}, {remote}" if chain else remote))
        out.append((hdrs.X_FORWARDED_PROTO, headers.get(hdrs.X_FORWARDED_PROTO, scheme)))
        host = headers.get(hdrs.X_FORWARDED_HOST) or headers.get(hdrs.HOST)
    else:
        if remote:
            out.append((hdrs.X_FORWARDED_FOR, remote))
        out.append((hdrs.X_FORWARDED_PROTO, scheme))
        host = headers.get(hdrs.HOST)
    if host:
        out.append((hdrs.X_FORWARDED_HOST, host))
    return out


def rewrite_location(value: str, *, upstream_origin: str, client_origin: str) -> str:
    """Point an absolute redirect at the upstream's own origin back at the proxy (nginx's
    `proxy_redirect default`): dstack builds absolute `Location`s from the Host it saw."""
    if value == upstream_origin or value.startswith(upstream_origin + "/"):
        return client_origin + value[len(upstream_origin) :]
    return value
