"""Statistics the reports share: percentiles and the bootstrap interval of a paired median."""

from __future__ import annotations

import random
import statistics

from .tools import pct

__all__ = ["median_interval", "pct"]


def median_interval(diffs: list[float], resamples: int = 2000) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of the median of `diffs` (seeded: reproducible)."""
    rng = random.Random(9)
    medians = sorted(statistics.median(rng.choices(diffs, k=len(diffs))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]
