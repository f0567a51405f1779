"""HTTP/1.1 over a raw socket, for bytes no client library would send (framing, targets,
smuggling attempts): send exactly the given bytes, read the first answer, whatever it is."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RawAnswer:
    """The first response on the connection; `status` None: closed (or silent) without one."""

    status: int | None
    content_type: str | None
    body: bytes

    def __str__(self) -> str:
        if self.status is None:
            return "no answer (connection closed)"
        return f"{self.status} {self.content_type or '-'} {self.body[:120]!r}"


Chunk = bytes | float  # bytes to send, or seconds to wait before the next chunk


async def exchange(
    host: str,
    port: int,
    data: bytes | Sequence[Chunk],
    *,
    timeout: float = 15.0,
    half_close: bool = False,
) -> RawAnswer:
    """Send `data` (bytes, or chunks with pauses between) and read the first response.

    `half_close` shuts the write side after sending, so a server waiting for more body sees
    the end of the stream. A body is read by Content-Length, chunked coding or until EOF.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        async with asyncio.timeout(timeout):
            for chunk in [data] if isinstance(data, bytes) else data:
                if isinstance(chunk, bytes):
                    writer.write(chunk)
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
                else:
                    await asyncio.sleep(chunk)
            if half_close and writer.can_write_eof():
                writer.write_eof()
            return await _read_response(reader)
    except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
        return RawAnswer(None, None, b"")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def exchange_together(
    host: str, port: int, requests: Sequence[bytes], *, timeout: float = 15.0
) -> list[RawAnswer]:
    """Open a connection per request first, then send them all at once and read each first
    answer: they arrive within a fraction of a millisecond of each other, where a client that
    connects as it sends spreads them over its connection set-ups."""
    streams = await asyncio.gather(*(asyncio.open_connection(host, port) for _ in requests))
    try:
        async with asyncio.timeout(timeout):
            for (_, writer), request in zip(streams, requests, strict=True):
                writer.write(request)
            return list(await asyncio.gather(*(_read_response(r) for r, _ in streams)))
    finally:
        for _, writer in streams:
            writer.close()


async def _read_response(reader: asyncio.StreamReader) -> RawAnswer:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:
        body = await reader.read()
    return RawAnswer(status, headers.get("content-type"), body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
