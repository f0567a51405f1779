"""The proxy's own errors and their one status mapping.

Placeholder until edge lands: re-exports what upstream.py holds today, plus UpstreamBusy.
"""

from __future__ import annotations

from .upstream import (
    BadRequestTarget,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    classify,
    error_response,
)


class UpstreamBusy(UpstreamError):  # placeholder until edge lands
    """A limit was truly reached: the request was not sent, so a retry is safe."""

    status = 503
    code = "upstream_busy"


__all__ = [
    "BadRequestTarget",
    "UpstreamBusy",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "classify",
    "error_response",
]
