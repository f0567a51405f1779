"""Batch calls over HTTP. Placeholder until batching lands: `post_json` (moved from upstream.py)
and `make_batch_session`, so batch calls never wait behind pass-through for a connection."""

from __future__ import annotations

import aiohttp
from aiohttp import hdrs
from multidict import CIMultiDict
from yarl import URL

from .batches import UpstreamReply
from .config import Config
from .errors import classify


# placeholder until batching lands
def make_batch_session(config: Config) -> aiohttp.ClientSession:
    """Batch calls' own session: pass-through traffic can never take its connections."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=config.keepalive_timeout),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None, connect=config.connect_timeout),
    )


# placeholder until batching lands
async def post_json(
    session: aiohttp.ClientSession,
    url: URL,
    headers: CIMultiDict[str],
    body: bytes,
    *,
    timeout: float,
) -> UpstreamReply:
    """POST `body` and read the whole answer. A connection that could not even be opened is
    tried once more, since nothing reached the upstream; anything later is not resent."""
    for attempt in (1, 2):
        try:
            async with session.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                auto_decompress=True,  # the proxy reads this body itself
                skip_auto_headers=(hdrs.USER_AGENT,),
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                return UpstreamReply(resp.status, resp.headers, await resp.read())
        except aiohttp.ClientConnectorError as exc:
            if attempt == 2:
                raise classify(exc) from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise classify(exc) from exc
    raise AssertionError("unreachable")
