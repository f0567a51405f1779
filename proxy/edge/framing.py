"""The public listener's connections: aiohttp's, with one gap closed. When a chunked body turns
out malformed after its request has been handed to a handler (a bad chunk-size line that came
after the headers), aiohttp's parser queues a 400 for later and drops the body's stream
without a word: the handler reading it would wait for as long as the client kept the
connection open. Here the stream fails with the parse error instead, and the handler answers
the 400 aiohttp gives a malformed request it sees whole (`bad_framing`; docs/hostile-inputs.md).

`PublicRunner` serves an app on such connections, with the listener's options."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo


class PublicRunner(web.AppRunner):
    """aiohttp's runner, always with `options` (tests serve the app with the same), on
    connections whose request bodies fail when their framing breaks."""

    def __init__(self, app: web.Application, options: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(app, **{**kwargs, **options})

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # the same server, making `_Connection`s
        return server


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


class _Connection(RequestHandler):
    __slots__ = ("_body",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._body: StreamReader | None = None  # the body of the last request parsed

    def data_received(self, data: bytes) -> None:
        queued = len(self._messages)
        super().data_received(data)
        for message, body in itertools.islice(self._messages, queued, None):
            if not isinstance(message, _ErrInfo):
                self._body = body
            elif self._body is not None and not self._body.is_eof():
                # The error belongs to the body still arriving, not to a request of its own.
                self._body.set_exception(message.exc)


def bad_framing(request: web.BaseRequest, exc: HttpProcessingError) -> web.StreamResponse:
    """The answer to a request whose body broke its framing: aiohttp's own 400 for a malformed
    request (text/plain, its parser's message), and the connection closed."""
    return request.protocol.handle_error(request, 400, exc, exc.message)
