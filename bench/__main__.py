"""`make bench`: every measurement in one run, against real dstack servers (0.18.40 and 0.22.5, on
SQLite; on Postgres too for the seed's claims) and a fast upstream; writes docs/measurements.md,
docs/measurements.json, the PNG plots in docs/ and the README's "Measured" section.

    .venv/bin/python -m bench [--quick] [--report-only]

--report-only redraws the documents from docs/measurements.json without measuring.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import tempfile
import time
from pathlib import Path

from harness.versions import CURRENT_VERSION, LEGACY_VERSION
from proxy.config import Config

from . import compare, hotspots, memory, passthrough, plots, policies, report, servers
from .results import Run, RunSettings
from .tools import ROOT, load, machine
from .wrk import POST_PATH

DOCS = ROOT / "docs"
JSON = DOCS / "measurements.json"
# Hand-written sections of docs/measurements.md (other benchmarks' readings) go below this line;
# make bench rewrites everything above it.
KEEP = "<!-- Hand-written below this line; make bench keeps it. -->"


def measure(quick: bool, databases: tuple[str, ...] = ("sqlite", "postgres")) -> Run:
    settings = RunSettings(
        pairs=20 if quick else 60,
        policy_rounds=1 if quick else 3,
        wrk_seconds=2 if quick else 3,
        wrk_rounds=1 if quick else 4,
        post_path=POST_PATH,
        default_policy=Config().policy,
    )
    started = time.monotonic()
    start_machine = machine()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        print("== pass-through (wrk) ==", flush=True)
        pt = passthrough.run(work / "pt", settings.wrk_seconds, settings.wrk_rounds)
        print("== where the pass-through time goes (py-spy) ==", flush=True)
        profile = hotspots.run(work / "profile", 8)
        print("== memory: 10 000 requests held, by the proxy and by bare aiohttp ==", flush=True)
        mem = memory.run(work / "mem", 100, 100)
        first_lap = time.monotonic() - started
        cmp = compare.Settings.make(quick, databases)
        legacy_rounds = 1 if quick else 2
        legacy_pol: policies.PolicyResults | None = None
        costs, cost_s = compare.client_cost(work / "cost", cmp)
        versions = []
        pol: policies.PolicyResults | None = None
        for spec in servers.specs(databases):
            print(f"== a real dstack {spec.label} server (about 20 s to start) ==", flush=True)
            here = cmp.for_database(spec.database)
            with servers.running(spec) as server:
                versions.append(compare.measure_version(server, work, here, spec))
                if spec.version == CURRENT_VERSION and spec.database == "sqlite":
                    print("== flush policies (dstack 0.22.5) ==", flush=True)
                    t0 = time.monotonic()
                    pol = policies.run(server, work / "pol", settings.pairs, settings.policy_rounds)
                    versions[-1].elapsed_s["policies"] = time.monotonic() - t0
            compare.measure_alone(work, here, spec, versions[-1])
            if spec.version == LEGACY_VERSION and spec.database == "sqlite":
                print("== flush policies (dstack 0.18.40, a fresh server) ==", flush=True)
                t0 = time.monotonic()
                with servers.running(spec) as server:
                    legacy_pol = policies.run_shapes(server, work / "pol-legacy", legacy_rounds)
                versions[-1].elapsed_s["policies"] = time.monotonic() - t0
    if pol is None:
        raise RuntimeError("the flush policies need dstack 0.22.5 on SQLite among the servers")
    return Run(
        machine=dataclasses.replace(start_machine, load_at_end=load()),
        settings=settings,
        passthrough=pt,
        profile=profile,
        memory=mem,
        policies=pol,
        compare=compare.Comparison(settings.default_policy, cmp, versions, costs, cost_s),
        elapsed_s=time.monotonic() - started,
        legacy_policies=legacy_pol,
        elapsed_sections_s={
            "passthrough, profile, memory": first_lap,
            "client cost": cost_s,
            **{f"{v.label} {k}": t for v in versions for k, t in v.elapsed_s.items()},
        },
    )


def write(run: Run) -> None:
    JSON.write_text(json.dumps(dataclasses.asdict(run), indent=1) + "\n")
    md = DOCS / "measurements.md"
    old = md.read_text() if md.exists() else ""
    kept = old[old.index(KEEP) :] if KEEP in old else KEEP + "\n"
    md.write_text(report.measurements_md(run) + "\n" + kept)
    plots.draw_all(run, DOCS)
    readme = ROOT / "README.md"
    text = readme.read_text()
    section = re.compile(r"(## Measured\n\n).*?(?=\n## )", re.DOTALL)
    readme.write_text(section.sub(lambda m: m.group(1) + report.readme_measured(run), text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples: a smoke run")
    parser.add_argument("--report-only", action="store_true", help="redraw from the JSON")
    parser.add_argument(
        "--databases",
        nargs="+",
        default=["sqlite", "postgres"],
        help="server databases to measure each version on (default: both; on Postgres only "
        "what the seed's claims need)",
    )
    args = parser.parse_args()
    run = (
        Run.from_json(json.loads(JSON.read_text()))
        if args.report_only
        else measure(args.quick, tuple(args.databases))
    )
    write(run)
    print(report.measurements_md(run).split("## 1.")[0])


if __name__ == "__main__":
    main()
