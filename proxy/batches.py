"""The types of a batch. Placeholder until batching lands: only `UpstreamReply` and `Outcome`,
moved here from upstream.py so that upstream.py holds only the request-target toolbox."""

from __future__ import annotations

from dataclasses import dataclass

from multidict import CIMultiDictProxy

from .errors import UpstreamError


# placeholder until batching lands
@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """A whole upstream response, read into memory (batch calls answer in a few bytes)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


Outcome = UpstreamReply | UpstreamError
