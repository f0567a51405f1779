"""Typed application keys: the only way resources are reached from handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from .config import Config
    from .edge.forwarding import Forwarder
    from .intake.route import Intake
    from .ops.metrics import Metrics
    from .state import State

CONFIG_KEY: Final[web.AppKey[Config]] = web.AppKey("config")
SESSION_KEY: Final[web.AppKey[aiohttp.ClientSession]] = web.AppKey("session")
METRICS_KEY: Final[web.AppKey[Metrics]] = web.AppKey("metrics")
INTAKE_KEY: Final[web.AppKey[Intake]] = web.AppKey("intake")
FORWARDER_KEY: Final[web.AppKey[Forwarder]] = web.AppKey("forwarder")
STATE_KEY: Final[web.AppKey[State]] = web.AppKey("state")
PUBLIC_APP_KEY: Final[web.AppKey[web.Application]] = web.AppKey("public_app")
