"""What a batch is: its key (identity only) and how a request's key is built, its target (where
and how it is sent, passed beside the batch), its members and how they group into calls, and
what one upstream call gives back."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple, TypeAlias

from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping
from yarl import URL

from ..errors import UpstreamError
from .endpoints import EndpointSpec, Names, ParsedBody, SharedFields

# Headers besides the credential that dstack reads and that can change its answer: requests
# that differ in them never share a call (docs/dstack-api.md, API versions).
READ_HEADERS: Final = ("X-API-Version",)
_READ_HEADERS_LOWER: Final = tuple(h.lower() for h in READ_HEADERS)
_NO_READ_HEADERS: Final = tuple((h, None) for h in _READ_HEADERS_LOWER)
CREDENTIAL_HEADERS: Final = ("Authorization", "Cookie")


class Member(NamedTuple):
    """One caller's part of a batch: the unit that is batched, shared when equal, and bisected.

    `serial` is 0 where repeating a name is harmless, so equal lists share one answer; where a
    repeat fails (the item must exist), each caller gets its own serial and its own answer.
    """

    names: Names
    serial: int = 0


def member_names(member: Member) -> Names:
    """What a member names: no two flights of one key carry the same name at once."""
    return member.names


@dataclass(frozen=True, slots=True)
class BatchKey:
    """Everything that can change the upstream's answer: requests batch only on equal keys."""

    endpoint: str
    project: str
    principal: str  # keyed fingerprint of the credential headers; never the token itself
    read_headers: tuple[tuple[str, str | None], ...]  # other headers dstack reads (X-API-Version)
    shared_fields: SharedFields  # body fields every member must share (abort, fleet name)


def call_family(key: BatchKey) -> str:
    """Keys whose calls take alike long: one endpoint of the one upstream."""
    return key.endpoint


@dataclass(frozen=True, slots=True)
class BatchTarget:
    """Where and how a batch is sent: the URL and headers of the request that opened it, which
    by construction of the key mean the same to dstack as every other member's."""

    spec: EndpointSpec
    url: URL
    headers: CIMultiDict[str]


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """A whole upstream response, read into memory (batch calls answer in a few bytes)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


Outcome: TypeAlias = UpstreamReply | UpstreamError
"""What one call gave."""


def rounds_of(members: Sequence[Member]) -> list[list[Member]]:
    """Members in rounds where no name repeats, each after every earlier member it overlaps."""
    rounds: list[list[Member]] = []
    last: dict[str | int, int] = {}
    for member in members:
        at = max((last[n] + 1 for n in member.names if n in last), default=0)
        if at == len(rounds):
            rounds.append([])
        rounds[at].append(member)
        last.update(dict.fromkeys(member.names, at))
    return rounds


def chunks(members: Sequence[Member], max_names: int | None) -> list[list[Member]]:
    """Members in arrival order, cut into calls of at most `max_names` distinct names (a member
    with more goes alone, as its caller sent it)."""
    out: list[list[Member]] = []
    names: set[str | int] = set()
    for member in members:
        grown: set[str | int] = {*names, *member.names}
        if out and (max_names is None or len(grown) <= max_names):
            out[-1].append(member)
            names = grown
        else:
            out.append([member])
            names = set(member.names)
    return out


def batch_key(
    spec: EndpointSpec,
    project: str,
    parsed: ParsedBody,
    headers: MultiMapping[str],
    secret: bytes,
) -> BatchKey:
    """The key of a request that passed the prechecks: everything that can change dstack's
    answer besides the names, the credential only as a keyed fingerprint."""
    return BatchKey(
        endpoint=spec.name,
        project=project,
        principal=fingerprint(headers, secret),
        # None for an absent header: dstack skips the version check then, while an empty
        # value is a 400, so the two must never share a call.
        read_headers=_read_headers(headers),
        shared_fields=parsed.shared_fields,
    )


def _read_headers(headers: MultiMapping[str]) -> tuple[tuple[str, str | None], ...]:
    read = tuple((h, headers.get(h)) for h in _READ_HEADERS_LOWER)
    # Most requests send none of them: they share one tuple instead of each holding its own.
    return _NO_READ_HEADERS if read == _NO_READ_HEADERS else read


def fingerprint(headers: MultiMapping[str], secret: bytes) -> str:
    """HMAC-SHA256 of the credential headers under `secret`: equal only for equal credentials,
    and no use to anyone who reads it without the secret."""
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    for name in CREDENTIAL_HEADERS:
        value = headers.get(name, "").encode("utf-8", "surrogateescape")
        mac.update(name.encode() + b"\0" + value + b"\0")
    return mac.hexdigest()
