"""Issue 14's measurements, per dstack server version (0.18.40 first, then 0.22.5) in one run,
the proxy at its shipped default configuration: N at once (`bulk.at_once`), the browser shape
(`bulk.browser`), lone stops and deletes (`lone.run`); and, once for both, the client's own
cost against an instant upstream (`bulk.client_cost`). Typed results, saved as plain JSON.

    .venv/bin/python -m bench.compare [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.processes import ProxyProcess
from harness.server import DstackServer
from harness.versions import CURRENT_VERSION, LEGACY_VERSION

from . import bulk, lone, servers
from .bulk import ClientCost, Phase
from .lone import LoneHops, LonePairs
from .plain import from_plain

CLAIM_SIZES = (10, 50, 100)  # the N of the seed's claims (compare_claims.py)


@dataclass(frozen=True)
class Settings:
    rounds: dict[int, int]  # N -> rounds of the N-at-once table
    deletes_up_to: dict[str, int]  # version -> the largest N whose deletes are measured
    browser_rounds: int
    lone_pairs: int
    cost_rounds: int
    databases: tuple[str, ...] = ("sqlite",)
    alone: bool = True  # whether the N beyond the deletes' budget run as stops on fresh servers
    hop_rounds: int = 300  # lone stops on absent runs per target (`lone.hops`), with lone pairs
    floors: bool = True  # N at once also as the leader's floor (`workload.LEADER_FLOOR`)
    # Rounds that replace `rounds` for one version: where a round is cheap (0.22.5's runs stop
    # and finish within seconds), a median of three instead of one round's noise.
    more_rounds: dict[str, dict[int, int]] = field(default_factory=dict)

    @staticmethod
    def make(quick: bool, databases: tuple[str, ...] = ("sqlite",)) -> Settings:
        """Rounds sized to the budget (make bench in about 70 min on 2 cores, Postgres included).
        Every stop needs fresh active runs, and every delete finished ones: 0.18.40's pipeline
        finishes about one stopped run a second, so there deletes stop at N = 50 (at 100 on
        0.22.5) and the larger N are stops only, each way on a fresh server
        (`bulk.stops_alone`). Measured on the shared 2-core machine: 0.18.40 about 1 min per
        50-run way with its deletes, 0.22.5 about 4 times faster; so every N takes three
        rounds, a median rather than one round's noise, but 0.18.40's N = 50 (one round of
        its deletes costs about 4 min): two runs of 2026-12-07 saw a single round decide cells
        at N = 10, 100 and 200, where one 99-run call took 770 ms against 632 in another round."""
        if quick:
            deletes = {LEGACY_VERSION: 10, CURRENT_VERSION: 50}
            return Settings({10: 1, 50: 1}, deletes, 1, 10, 3, databases, hop_rounds=40)
        return Settings(
            {10: 2, 20: 1, 50: 1, 100: 1, 200: 1},
            {LEGACY_VERSION: 50, CURRENT_VERSION: 100},
            2,
            20,
            5,
            databases,
            more_rounds={
                LEGACY_VERSION: {10: 3, 20: 3, 100: 3, 200: 3},
                CURRENT_VERSION: {10: 3, 20: 3, 50: 3, 100: 3, 200: 3},
            },
        )

    def for_database(self, database: str) -> Settings:
        """On SQLite, everything. On another database (Postgres, issue 18), only what the seed's
        claims need, to stay within the bench's budget: the N of `CLAIM_SIZES`, stops and
        deletes within the deletes' budget, stops alone beyond it (0.18.40's N = 100, for the
        CPU and memory claim); no browser shape, no lone pairs, no floors."""
        if database == "sqlite":
            return self
        rounds = {n: r for n, r in self.rounds.items() if n in CLAIM_SIZES}
        return replace(
            self, rounds=rounds, browser_rounds=0, lone_pairs=0, more_rounds={}, floors=False
        )

    def rounds_of(self, version: str) -> dict[int, int]:
        """N -> rounds of the N-at-once table on `version`."""
        return {**self.rounds, **self.more_rounds.get(version, {})}

    def with_deletes(self, version: str) -> dict[int, int]:
        rounds = self.rounds_of(version).items()
        return {n: r for n, r in rounds if n <= self.deletes_up_to.get(version, 0)}

    def stops_only(self, version: str) -> dict[int, int]:
        if not self.alone:
            return {}
        rounds = self.rounds_of(version).items()
        return {n: r for n, r in rounds if n > self.deletes_up_to.get(version, 0)}


@dataclass
class VersionResults:
    version: str
    database: str
    startup_s: float
    at_once: list[Phase] = field(default_factory=list)
    browser: list[Phase] = field(default_factory=list)
    lone: list[LonePairs] = field(default_factory=list)
    elapsed_s: dict[str, float] = field(default_factory=dict)  # per section
    hops: LoneHops | None = None

    @property
    def label(self) -> str:
        return servers.ServerSpec(self.version, self.database).label


@dataclass
class Comparison:
    policy: str  # the proxy's default policy, as Config() says
    settings: Settings
    versions: list[VersionResults]
    client_cost: list[ClientCost]
    cost_elapsed_s: float

    @staticmethod
    def from_json(raw: dict[str, Any]) -> Comparison:
        return from_plain(Comparison, raw)


def _timed(elapsed: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    started = time.monotonic()
    try:
        return fn()
    finally:
        elapsed[name] = time.monotonic() - started


def measure_version(
    server: DstackServer, workdir: Path, settings: Settings, spec: servers.ServerSpec
) -> VersionResults:
    out = VersionResults(spec.version, spec.database, server.startup_seconds or 0.0)
    label = spec.label
    with ProxyProcess(server.url, workdir / f"proxy-{spec.version}-{spec.database}.log") as proxy:
        print(f"== {label}: N at once, stops then deletes ==", flush=True)
        out.at_once = _timed(
            out.elapsed_s,
            "at_once",
            lambda: bulk.at_once(
                server, proxy.url, settings.with_deletes(spec.version), label, settings.floors
            ),
        )
        if settings.browser_rounds:
            print(f"== {label}: 20 over 6 connections ==", flush=True)
            out.browser = _timed(
                out.elapsed_s,
                "browser",
                lambda: bulk.browser(server, proxy.url, settings.browser_rounds, label),
            )
        if settings.lone_pairs:
            print(f"== {label}: lone stops and deletes ==", flush=True)
            out.lone = _timed(
                out.elapsed_s, "lone", lambda: lone.run(server, proxy.url, settings.lone_pairs)
            )
            print(f"== {label}: what a hop adds, lone stops of absent runs ==", flush=True)
            hop_dir = workdir / f"hops-{spec.version}-{spec.database}"
            out.hops = _timed(
                out.elapsed_s,
                "hops",
                lambda: lone.hops(server, proxy.url, hop_dir, settings.hop_rounds),
            )
    return out


def measure_alone(
    workdir: Path, settings: Settings, spec: servers.ServerSpec, out: VersionResults
) -> None:
    """The N of `settings.stops_only`, each way on a fresh server (run it with no other server
    of the bench running)."""
    label = spec.label
    alone = settings.stops_only(spec.version)
    if alone:
        print(f"== {label}: N at once, stops only, each way on a fresh server ==", flush=True)
        started = time.monotonic()
        for n, r in alone.items():
            out.at_once += bulk.stops_alone(
                lambda: fresh(spec, workdir), n, r, label, settings.floors
            )
        out.elapsed_s["stops_alone"] = time.monotonic() - started


@contextlib.contextmanager
def fresh(spec: servers.ServerSpec, workdir: Path) -> Iterator[tuple[DstackServer, str]]:
    """A new server of `spec` and a proxy at its default configuration in front of it."""
    with (
        servers.running(spec) as server,
        ProxyProcess(server.url, workdir / f"proxy-fresh-{spec.version}.log") as proxy,
    ):
        yield server, proxy.url


def client_cost(workdir: Path, settings: Settings) -> tuple[list[ClientCost], float]:
    print("== the client's own cost: N at once against an instant upstream ==", flush=True)
    started = time.monotonic()
    costs = bulk.client_cost(workdir, sorted(settings.rounds), settings.cost_rounds)
    return costs, time.monotonic() - started


def main() -> None:
    from proxy.config import Config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--databases", nargs="+", default=["sqlite"], help="sqlite, postgres")
    args = parser.parse_args()
    settings = Settings.make(args.quick, tuple(args.databases))
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        work = Path(tmp)
        costs, cost_s = client_cost(work, settings)
        versions = []
        for spec in servers.specs(settings.databases):
            here = settings.for_database(spec.database)
            with servers.running(spec) as server:
                versions.append(measure_version(server, work, here, spec))
            measure_alone(work, here, spec, versions[-1])
    result = Comparison(str(Config().policy), settings, versions, costs, cost_s)
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
