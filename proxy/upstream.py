"""Where a client request goes upstream: the one request-target check, the upstream URL, and
the headers to send. Shared by pass-through, WebSockets and batches."""

from __future__ import annotations

from typing import Final

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from .config import Config
from .errors import BadRequestTarget, MethodNotAllowed
from .headers import SKIP_AUTO_HEADERS, upstream_request_headers
from .values import is_trusted

# CONNECT would open a tunnel and TRACE echo credentials back; dstack serves neither.
ALLOWED_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def check_target(request: web.Request) -> None:
    """Refuse what could reach another host or be read differently upstream: methods other
    than ALLOWED_METHODS (405), and targets that are not a plain path starting with exactly one
    `/` (absolute- or authority-form, `*`, `//host`) or that hold a backslash (400).

    The entry handler (app.py) calls this for every request, so `upstream_url` can trust its
    input."""
    if request.method not in ALLOWED_METHODS:
        raise MethodNotAllowed(f"method {request.method} not allowed")
    raw = request.raw_path
    if not raw.startswith("/") or raw.startswith("//"):
        raise BadRequestTarget("request target must be a path")
    if "\\" in raw:
        raise BadRequestTarget("backslash in request target")


def upstream_url(origin: str, raw_path: str) -> URL:
    """The configured origin plus the client's raw path and query, never re-quoted.

    Built by concatenation, not `URL.join`, so the host always comes from configuration;
    `check_target` has refused every target that could change it."""
    return URL(origin + raw_path, encoded=True)


def request_target(
    request: web.Request, config: Config, *, rewritten: bool = False
) -> tuple[URL, list[tuple[str, str]]]:
    """URL and headers (as pairs) for sending `request` to the configured upstream.
    `rewritten`: the body sent is not the one the client framed, so its length and encoding
    headers are dropped."""
    url = upstream_url(config.upstream, request.raw_path)
    headers = upstream_request_headers(
        request.headers,
        remote=request.remote,
        scheme=request.scheme,
        trusted_peer=is_trusted(request.remote, config.trusted_proxies),
        body_rewritten=rewritten or hdrs.CONTENT_ENCODING in request.headers,
    )
    return url, headers


class SentAsGiven(aiohttp.ClientRequest):
    """A client request that sends the headers it is given and invents none (no `Accept`,
    `Accept-Encoding`, `User-Agent` or `Content-Type` of aiohttp's own): what a session's
    `skip_auto_headers` does, with the set built once here instead of on every request
    (three microseconds each, docs/measurements.md). The proxy's sessions use it."""

    _skip_auto_headers = CIMultiDict((h, None) for h in SKIP_AUTO_HEADERS)

    def update_auto_headers(self, skip_auto_headers: object) -> None:
        """Nothing to add: every header aiohttp would add is in the skip set."""
