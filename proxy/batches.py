"""What a batch is: its key (identity only), its target (where and how it is sent, passed beside
the batch), its members, and what one upstream call gives back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, TypeAlias

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .endpoints import EndpointSpec
from .errors import UpstreamError

Names: TypeAlias = tuple[str, ...] | tuple[int, ...]
"""The item names one caller's request carries, as sent."""

SharedFields: TypeAlias = tuple[tuple[str, object], ...]


class Member(NamedTuple):
    """One caller's part of a batch: the unit that is batched, shared when equal, and bisected.

    `serial` is 0 where repeating a name is harmless, so equal lists share one answer; where a
    repeat fails (the item must exist), each caller gets its own serial and its own answer.
    """

    names: Names
    serial: int = 0


@dataclass(frozen=True, slots=True)
class BatchKey:
    """Everything that can change the upstream's answer: requests batch only on equal keys."""

    endpoint: str
    project: str
    principal: str  # keyed fingerprint of the credential headers; never the token itself
    read_headers: tuple[tuple[str, str | None], ...]  # other headers dstack reads (X-API-Version)
    shared_fields: SharedFields  # body fields every member must share (abort, fleet name)


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
