"""Shadow mode: every request goes through singly, and the batches that would have formed are
counted and logged, so an operator can see what batching would do before turning it on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from ..batching.batcher import Batcher, BatcherClosed, ClosedBatch
from ..batching.batches import BatchKey, Member
from ..config import Config
from ..intake.limits import Limits
from ..ops.metrics import Metrics
from .build import batcher_for

log = structlog.get_logger(__name__)


class Shadow:
    """A batcher of its own whose flush only observes: it sends nothing, and every member's
    result is None. Observed members count against the same admission caps as batched ones."""

    def __init__(self, config: Config, limits: Limits, metrics: Metrics) -> None:
        self._limits = limits
        self._metrics = metrics
        self._batcher: Batcher[BatchKey, Member, None, None] = batcher_for(
            config, self._observe, lambda batch: BatcherClosed("not observed")
        )  # observing never waits behind a flight long: it sends nothing
        self._tasks: set[asyncio.Task[None]] = set()  # submissions under way, for aclose()

    @property
    def pending(self) -> int:
        """Members waiting in shadow batches."""
        return self._batcher.pending

    def observe(self, key: BatchKey, member: Member, size: int) -> None:
        """Count `member` into the batch it would join, without holding up its request; at a
        cap it is not observed (its request goes through all the same)."""
        if self._limits.admit(key, size):
            return
        task = asyncio.get_running_loop().create_task(self._submit(key, member, size))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self, deadline: float | None = None) -> None:
        """Close the open shadow batches now and wait for the submissions under way; at
        `deadline` (the running loop's time) the batches still open are dropped."""
        await self._batcher.aclose(deadline)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _submit(self, key: BatchKey, member: Member, size: int) -> None:
        try:
            with contextlib.suppress(BatcherClosed):  # shutting down: nothing left to observe
                await self._batcher.submit(key, member, _no_context)
        finally:
            self._limits.release(key, size)

    async def _observe(
        self, batch: ClosedBatch[BatchKey, Member, None], resolve: Callable[[Member, None], None]
    ) -> None:
        self._metrics.shadow_batches.labels(batch.key.endpoint).inc()
        log.info(
            "batch_shadowed",
            endpoint=batch.key.endpoint,
            project=batch.key.project,
            size=batch.waiters,
            distinct=len(batch.members),
            reason=batch.reason.value,
        )
        for member in batch.members:
            resolve(member, None)


def _no_context() -> None:
    return None
