"""The batching core built from the configuration, one way for the proxy and shadow mode alike:
shadow mode must count the batches that the configured policy would form."""

from __future__ import annotations

from typing import TypeVar

from ..batching.batcher import Batcher
from ..batching.batches import BatchKey, Member, call_family, member_names
from ..batching.waiting import ExpireFn, FlushFn
from ..config import Config
from ..intake.limits import Limits

R = TypeVar("R")
C = TypeVar("C")


def batcher_for(
    config: Config,
    flush: FlushFn[BatchKey, Member, C, R],
    expire: ExpireFn[BatchKey, Member, C],
) -> Batcher[BatchKey, Member, R, C]:
    """The one way to build a batcher from the configuration."""
    return Batcher(
        flush,
        window=config.window,
        max_size=config.max_batch,
        max_wait=config.max_wait,
        expire=expire,
        policy=config.policy,
        quiet=config.quiet,
        names=member_names,
        family=call_family,
    )


def limits_for(config: Config) -> Limits:
    """The admission caps, shared by batched and shadow-observed requests."""
    return Limits(config.max_pending, config.max_pending_per_key, config.max_pending_bytes)
