"""The one switch between the bounded runs CI makes and the long local ones
(`COALESCER_LONG=1`, `make test-long`): a longer soak, more fuzzing and property examples; and
the one hypothesis profile every property test runs under (loaded by tests/conftest.py)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

LONG = os.environ.get("COALESCER_LONG") == "1"

PROFILE = "coalescer"
settings.register_profile(
    PROFILE,
    # Examples drive real processes and servers: their time is measured in bench/, never here.
    deadline=None,
    # No .hypothesis directory: a failure prints its example, and CI starts from nothing anyway.
    database=None,
    # The same sample on every bounded run, so CI never hangs on a new draw; long runs draw anew.
    derandomize=not LONG,
    # Fixtures (servers, proxies) are shared by the examples on purpose, and slow to answer.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def examples(ci: int, long: int) -> settings:
    """The profile with this test's example count: `long` in long mode, else `ci`. Use it as
    the test's decorator: `@examples(ci=40, long=400)`."""
    return settings(settings.get_profile(PROFILE), max_examples=long if LONG else ci)
