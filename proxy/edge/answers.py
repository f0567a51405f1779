"""The proxy's own answers: an error (errors.py) rendered in dstack's own error shape
(`{"detail": [{"msg", "code"}]}`, docs/dstack-api.md, Errors), so clients that show dstack's
errors show these too, marked with `X-Proxy-Error` so operators can tell them apart."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web

from ..errors import PROXY_ERROR_HEADER, ProxyError


def error_response(exc: ProxyError, headers: Mapping[str, str] | None = None) -> web.Response:
    """`exc` as dstack's error shape, with its status and `X-Proxy-Error: <code>`."""
    body = {"detail": [{"msg": str(exc) or exc.code.replace("_", " "), "code": exc.code}]}
    return web.Response(
        status=exc.status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={PROXY_ERROR_HEADER: exc.code, **(headers or {})},
    )
