"""Whether a request on a batchable path fits a batch: its request line and headers, its body
read within bounds, and its key. Pure but for the body read; every "no" has a reason, the label
of `proxy_batch_bypass_total`."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
from typing import Final

from aiohttp import hdrs, web
from multidict import MultiMapping

from .batches import BatchKey
from .endpoints import EndpointSpec, ParsedBody
from .headers import connection_tokens

# Headers besides the credential that dstack reads and that can change its answer: requests
# that differ in them never share a call (docs/dstack-api.md, API versions).
READ_HEADERS: Final = ("X-API-Version",)
CREDENTIAL_HEADERS: Final = (hdrs.AUTHORIZATION, hdrs.COOKIE)
BODY_READ_TIMEOUT: Final = 10.0
JSON_CHARSETS: Final = frozenset({None, "utf-8", "utf8"})
PLAIN_CONNECTION: Final = frozenset({"keep-alive", "close"})


class BypassReason(enum.StrEnum):
    """Why a request on a batchable path went through singly (the bypass metric's label)."""

    CLOSED = "closed"  # draining, or the batcher already closed
    QUERY = "query"
    CONTENT_TYPE = "content_type"
    CONTENT_ENCODING = "content_encoding"
    CREDENTIALS = "credentials"  # not exactly one Authorization, or more than one Cookie
    HEADERS = "headers"  # a repeated read header, or a Connection header naming headers
    TOO_LARGE = "too_large"
    SLOW_BODY = "slow_body"
    BODY = "body"  # not exactly the endpoint's fields, JSON types and a non-empty list
    PENDING_LIMIT = "pending_limit"
    KEY_LIMIT = "key_limit"
    BYTES_LIMIT = "bytes_limit"
    # Its key was idle and the policy sends at once (idle, adaptive): it went as it came,
    # as the key's flight, while requests arriving meanwhile were batched behind it.
    ALONE = "alone"


def precheck(request: web.BaseRequest, max_body_bytes: int) -> BypassReason | None:
    """Why the request line or headers rule out batching, if they do (the body comes later)."""
    headers = request.headers
    if "?" in request.raw_path:
        return BypassReason.QUERY
    if hdrs.CONTENT_TYPE in headers and (
        request.content_type != "application/json" or request.charset not in JSON_CHARSETS
    ):
        return BypassReason.CONTENT_TYPE
    if hdrs.CONTENT_ENCODING in headers:
        return BypassReason.CONTENT_ENCODING
    if len(headers.getall(hdrs.AUTHORIZATION, ())) != 1 or len(headers.getall(hdrs.COOKIE, ())) > 1:
        return BypassReason.CREDENTIALS
    if any(len(headers.getall(h, ())) > 1 for h in READ_HEADERS):
        return BypassReason.HEADERS
    if connection_tokens(headers) - PLAIN_CONNECTION:
        # It would strip a header the key was built with from the batch call (Authorization).
        return BypassReason.HEADERS
    if (request.content_length or 0) > max_body_bytes:
        return BypassReason.TOO_LARGE
    return None


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
        read_headers=tuple((h.lower(), headers.get(h)) for h in READ_HEADERS),
        shared_fields=parsed.shared_fields,
    )


def fingerprint(headers: MultiMapping[str], secret: bytes) -> str:
    """HMAC-SHA256 of the credential headers under `secret`: equal only for equal credentials,
    and no use to anyone who reads it without the secret."""
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    for name in CREDENTIAL_HEADERS:
        value = headers.get(name, "").encode("utf-8", "surrogateescape")
        mac.update(name.encode() + b"\0" + value + b"\0")
    return mac.hexdigest()


async def read_capped(request: web.Request, cap: int) -> tuple[bytes, BypassReason | None]:
    """Up to cap+1 bytes of body, and why the rest is unread (None: it was all read). A body
    over the cap or slower than BODY_READ_TIMEOUT is then streamed through as it comes."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_READ_TIMEOUT):
            while size <= cap:
                chunk = await request.content.readany()
                if not chunk:
                    return b"".join(chunks), None
                chunks.append(chunk)
                size += len(chunk)
    except TimeoutError:
        return b"".join(chunks), BypassReason.SLOW_BODY
    return b"".join(chunks), BypassReason.TOO_LARGE
