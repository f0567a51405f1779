"""The PNG plots in docs/, drawn with matplotlib from one run's results."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt

from . import compare_plot
from .compare_cells import VERSIONS_PLOT
from .report import PASSTHROUGH_PLOT, POLICY_PLOT, lone_figures, passthrough_figures
from .results import Run


def policies(run: Run, path: Path) -> None:
    """What each flush policy adds to a lone stop: against the real server, on fresh active runs
    (p50 difference and paired median with its 95% interval: the server's jitter is large) and
    on unknown runs (steady), and against an instant upstream (p50, p99)."""
    real, unknown = lone_figures(run), lone_figures(run, "unknown")
    instant = lone_figures(run, "instant")
    names = [n for n in real if n != "direct"]
    x = list(range(len(names)))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.5))
    paired = (("added_p50", "p50"), ("paired", "paired median, 95% interval"))
    for ax, figures, keys, title in (
        (axes[0], real, paired, "real server, fresh runs"),
        (axes[1], unknown, paired, "real server, unknown runs"),
        (axes[2], instant, (("added_p50", "p50"), ("added_p99", "p99")), "instant upstream"),
    ):
        for k, (key, label) in enumerate(keys):
            values = [getattr(figures[n], key) for n in names]
            errors = None
            if key == "paired":
                errors = [
                    [v - figures[n].paired_low for v, n in zip(values, names, strict=True)],
                    [figures[n].paired_high - v for v, n in zip(values, names, strict=True)],
                ]
            bars = ax.bar([i - 0.2 + 0.4 * k for i in x], values, 0.4, label=label, yerr=errors)
            ax.bar_label(bars, fmt="%+.1f")
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="target: 1 ms at p50")
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xticks(x, names)
        ax.set(ylabel="ms added over direct", title=f"a lone stop, {title}")
        ax.margins(y=0.15)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize="small")
        ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def passthrough(run: Run, path: Path) -> None:
    """Each pass-through against the same fast upstream: requests/s under wrk, and requests per
    CPU-second of its process (what the shared machine's noise hardly touches)."""
    fig_data = passthrough_figures(run)
    names = [n for n in fig_data if n != "direct"]
    fig, (wall, cpu) = plt.subplots(1, 2, figsize=(10, 4))
    bars = wall.bar(names, [fig_data[n].rps for n in names])
    wall.bar_label(bars, fmt="%.0f")
    wall.set(ylabel="requests/s", title="wrk -t1 -c32, small POST (median of rounds)")
    bars = cpu.bar(names, [1e6 / fig_data[n].cpu_us for n in names], color="tab:green")
    cpu.bar_label(bars, fmt="%.0f")
    cpu.set(ylabel="requests per CPU-second", title="the same, per CPU-second of the process")
    for ax in (wall, cpu):
        ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def draw_all(run: Run, docs: Path) -> list[Path]:
    paths = [docs / POLICY_PLOT, docs / PASSTHROUGH_PLOT]
    for draw, path in zip((policies, passthrough), paths, strict=True):
        draw(run, path)
    if run.compare is not None:
        compare_plot.draw(run.compare, docs)
        paths.append(docs / VERSIONS_PLOT)
    return paths


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
