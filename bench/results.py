"""One `make bench` run's results, typed: what `python -m bench` measures, saves as plain JSON in
docs/measurements.json, and reads back (`Run.from_json`) for the report and the plots."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .compare import Comparison
from .hotspots import Profile
from .memory import MemoryResults
from .passthrough import PassthroughResults
from .plain import from_plain
from .policies import PolicyResults
from .tools import Machine


@dataclass
class RunSettings:
    pairs: int  # lone pairs per policy
    policy_rounds: int
    wrk_seconds: int
    wrk_rounds: int
    post_path: str
    default_policy: str


@dataclass
class Run:
    machine: Machine
    settings: RunSettings
    passthrough: PassthroughResults
    profile: Profile | None
    memory: list[MemoryResults]
    policies: PolicyResults
    compare: Comparison | None
    elapsed_s: float = 0.0
    elapsed_sections_s: dict[str, float] = dataclasses.field(default_factory=dict)
    # The same policies on dstack 0.18.40, shapes only (`policies.run_shapes`), on a fresh server.
    legacy_policies: PolicyResults | None = None

    def memory_by_target(self) -> dict[str, MemoryResults]:
        return {m.target: m for m in self.memory}

    @staticmethod
    def from_json(raw: dict[str, Any]) -> Run:
        profile = raw.get("profile")
        if profile and "bare aiohttp" in profile:  # runs saved before the profile was typed
            profile = {**profile, "bare": profile["bare aiohttp"]}
        return from_plain(Run, {**raw, "profile": profile})
