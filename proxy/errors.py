"""The proxy's own errors and the one mapping from an error to the answer a caller gets."""

# placeholder until edge lands: re-exports of what still lives in upstream.py on this branch.

from __future__ import annotations

from .upstream import (
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    classify,
    error_response,
)

__all__ = ["UpstreamError", "UpstreamTimeout", "UpstreamUnavailable", "classify", "error_response"]
