"""Whether a request on a batchable path fits a batch: its request line and headers, and its body
read within bounds (its key is built in batches.py). Every "no" has a reason, the label of
`dstack_coalescer_batch_bypass_total`."""

from __future__ import annotations

import asyncio
import enum
from typing import Final

from aiohttp import hdrs, web
from aiohttp.helpers import parse_content_type

from ..batching.batches import READ_HEADERS
from ..edge.headers import connection_tokens

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
    # Without a Content-Type, dstack 0.22.5 (FastAPI's strict content type) refuses the body
    # with 422, where a batch call, which says JSON, would run it: such a request goes alone.
    if (content_type := headers.get(hdrs.CONTENT_TYPE)) is None or not _is_json(content_type):
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


def _is_json(content_type: str) -> bool:
    """Parsed as `request.content_type` and `.charset` would be, by the same cached function,
    without the copy of the parameters that those keep on each request while it is held."""
    media_type, params = parse_content_type(content_type)
    if media_type != "application/json":
        return False
    charset = params.get("charset")  # its value is case-insensitive (RFC 9110 §8.3.2)
    return (charset.lower() if charset is not None else None) in JSON_CHARSETS
