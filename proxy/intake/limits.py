"""Admission caps for the batching path: pending requests (total and per key) and buffered body
bytes. At a cap a request is passed through singly, never rejected."""

from __future__ import annotations

from collections.abc import Hashable

from .fit import BypassReason


class Limits:
    """Counts what is admitted until released; per-key entries vanish when they reach zero."""

    def __init__(self, max_pending: int, max_per_key: int, max_bytes: int) -> None:
        self._max_pending = max_pending
        self._max_per_key = max_per_key
        self._max_bytes = max_bytes
        self._pending = 0
        self._bytes = 0
        self._per_key: dict[Hashable, int] = {}  # no zero entries: memory follows live keys

    def admit(self, key: Hashable, size: int) -> BypassReason | None:
        """Take a place and return None, or return why there is none."""
        if self._pending >= self._max_pending:
            return BypassReason.PENDING_LIMIT
        if self._per_key.get(key, 0) >= self._max_per_key:
            return BypassReason.KEY_LIMIT
        if self._bytes + size > self._max_bytes:
            return BypassReason.BYTES_LIMIT
        self._pending += 1
        self._bytes += size
        self._per_key[key] = self._per_key.get(key, 0) + 1
        return None

    def release(self, key: Hashable, size: int) -> None:
        self._pending -= 1
        self._bytes -= size
        left = self._per_key[key] - 1
        if left:
            self._per_key[key] = left
        else:
            del self._per_key[key]
