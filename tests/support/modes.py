"""The one switch between the bounded runs CI makes and the long local ones
(`COALESCER_LONG=1`, `make test-long`): a longer soak, more fuzzing and property examples."""

from __future__ import annotations

import os

LONG = os.environ.get("COALESCER_LONG") == "1"


def examples(ci: int, long: int) -> int:
    """Hypothesis examples for this run: `long` in long mode, else `ci`."""
    return long if LONG else ci
