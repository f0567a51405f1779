"""The types of a batch: what identifies it, where it goes, and what one call gives back."""

# placeholder until batching lands: the names of the contract, most of them re-exported from
# where they still live on this branch.

from __future__ import annotations

from dataclasses import dataclass

from multidict import CIMultiDict
from yarl import URL

from .endpoints import EndpointSpec, Member
from .endpoints import Item as Names
from .upstream import UpstreamError, UpstreamReply

__all__ = ["BatchKey", "BatchTarget", "Member", "Names", "Outcome", "UpstreamReply"]

Outcome = UpstreamReply | UpstreamError


@dataclass(frozen=True, slots=True)
class BatchKey:
    """Identity only: requests batch together only on equal keys."""

    endpoint: str
    project: str
    principal: str  # keyed fingerprint of the credential headers; never the token itself
    read_headers: tuple[tuple[str, str | None], ...]
    shared_fields: tuple[tuple[str, object], ...]


@dataclass(frozen=True, slots=True)
class BatchTarget:
    """Where and how a batch's calls go: the URL and headers of the batch's first request,
    which (by construction of the key) the upstream treats as every other member's."""

    spec: EndpointSpec
    url: URL
    headers: CIMultiDict[str]
