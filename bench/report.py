"""docs/measurements.md and the README's "Measured" section, written from one run's typed
results (`results.Run`, saved as docs/measurements.json); each section in its own module."""

from __future__ import annotations

from . import compare_claims, compare_report
from .compare_cells import VERSIONS_PLOT
from .report_passthrough import (
    PASSTHROUGH_PLOT,
    memory_section,
    passthrough_figures,
    passthrough_section,
    profile_section,
)
from .report_policies import POLICY_PLOT, lone_figures, policy_section, targets_table
from .report_policies_legacy import legacy_policy_section
from .report_text import para
from .results import Run

__all__ = ["PASSTHROUGH_PLOT", "POLICY_PLOT", "lone_figures", "passthrough_figures"]


def _servers(run: Run) -> str:
    c = run.compare
    labels = [v.label for v in c.versions] if c else [run.machine.dstack]
    return " and ".join(labels)


def _databases(run: Run) -> str:
    c = run.compare
    if c is None or all(v.database == "sqlite" for v in c.versions):
        return "SQLite"
    return "SQLite; Postgres for the seed's claims, in a throw-away cluster"


def _header(run: Run) -> str:
    m = run.machine
    return para(
        "Written by `make bench` (`python -m bench`) from one run, down to the marker at the "
        "end; hand-written notes go below it. "
        f"Run of {m.date} on {m.cores} cores ({m.cpu}), Linux {m.kernel}, "
        f"Python {m.python}, aiohttp {m.aiohttp}, real dstack {_servers(run)} "
        f"servers on loopback ({_databases(run)}), commit `{m.commit}`; the whole run took "
        f"{run.elapsed_s / 60:.1f} min. Upstream calls are counted from the dstack "
        "server's own DEBUG log, never from the proxy's metrics. The machine is shared "
        f"with other work (load average {m.load} at the start, {m.load_at_end} at the "
        "end), so absolute times are noisy; every comparison is interleaved within the run. "
        "Raw data: [measurements.json](measurements.json).",
    )


def _all_targets(run: Run) -> str:
    c = run.compare
    both = (
        "On each server version, the proxy at its shipped default (details in section 2):\n\n"
        + compare_report.targets_summary(c)
        + "\n\nThe flush policies side by side, on dstack 0.22.5:\n\n"
        if c
        else ""
    )
    return both + targets_table(run)


def _policies_section(run: Run) -> str:
    """On dstack 0.22.5, then (if measured) on 0.18.40."""
    return "\n\n".join(filter(None, [policy_section(run), legacy_policy_section(run)]))


def _versions_section(run: Run) -> str:
    c = run.compare
    return compare_report.section(c) if c else "Not measured in this run."


def measurements_md(run: Run) -> str:
    sections = [
        ("# Measurements", _header),
        ("## Targets", _all_targets),
        ("## 1. Flush policies", _policies_section),
        (
            "## 2. dstack 0.18.40 and 0.22.5 side by side: N at once, the browser, one request",
            _versions_section,
        ),
        ("## 3. Pass-through", passthrough_section),
        ("## 4. Memory", memory_section),
        ("## 5. Where the pass-through time goes", profile_section),
    ]
    return "\n\n".join(f"{title}\n\n{body(run)}" for title, body in sections) + "\n"


def readme_measured(run: Run) -> str:
    """The body of the README's "Measured" section: the headline figures and one plot."""
    c = run.compare
    headline = compare_claims.headline(c) if c else []
    pt = passthrough_figures(run)
    mem = run.memory_by_target()
    m = run.machine
    return "\n".join(
        [
            para(
                f"From one `make bench` run ({m.date}, {m.cores} cores, real dstack "
                f"{_servers(run)} servers; upstream calls counted from their own logs). Details, "
                "policies and method: [docs/measurements.md](docs/measurements.md).",
            ),
            "",
            *(para(line, indent="  ") for line in headline),
            para(
                f"- Pass-through: {pt['proxy'].rps:.0f} requests/s, "
                f"{pt['proxy'].vs_bare:.0%} of a bare aiohttp pass-through "
                f"({pt['bare aiohttp'].rps:.0f}/s) on the same core; nginx "
                f"{pt['nginx'].rps:.0f}/s.",
                indent="  ",
            ),
            para(
                f"- Peak RSS holding {mem['proxy'].requests} requests: "
                f"{mem['proxy'].peak_rss_mb:.0f} MB (bare aiohttp: "
                f"{mem['bare aiohttp'].peak_rss_mb:.0f} MB).",
                indent="  ",
            ),
            "",
            _all_targets(run),
            "",
            f"![N at once on dstack 0.18.40 and 0.22.5](docs/{VERSIONS_PLOT})",
            "",
            para(
                "Every caller still gets its own answer: when a batched call fails (say, a delete "
                "naming one run that is still active), the proxy splits the callers in halves and "
                "resends until each failing request stands alone with dstack's own answer to it.",
            ),
            "",
        ]
    )
