"""Every tier: property tests run under the one hypothesis profile (tests/support/modes.py)."""

from hypothesis import settings

from tests.support.modes import PROFILE

settings.load_profile(PROFILE)
