"""Mutable run-time state of one proxy app: draining, and the open websockets to close."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web


@dataclass(eq=False, slots=True)
class State:
    draining: bool = False  # set on SIGTERM: readiness fails, new mergeable requests pass through
    websockets: set[web.WebSocketResponse] = field(default_factory=set)
