"""The PNG plots in docs/, drawn with matplotlib from one run's results."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt

from .report import (
    BATCH_PLOT,
    PASSTHROUGH_PLOT,
    POLICY_PLOT,
    Data,
    lone_figures,
    passthrough_figures,
)

WAYS = ("direct singles", "proxy singles", "direct batch")
LABELS = {"direct singles": "direct, one request each", "proxy singles": "through the proxy"}


def batching(data: Data, path: Path) -> None:
    """Upstream calls and wall time against N for the stops: direct vs proxy vs one batch."""
    fig, (calls, wall) = plt.subplots(1, 2, figsize=(10, 4))
    for way in WAYS:
        rows = sorted(
            (r for r in data["sweep"] if r["op"] == "stop" and r["way"] == way),
            key=lambda r: r["callers"],
        )
        n = [r["callers"] for r in rows]
        label = LABELS.get(way, "one direct request naming all N")
        calls.plot(n, [r["upstream_calls"] for r in rows], marker="o", label=label)
        wall.plot(n, [r["wall_s"] for r in rows], marker="o", label=label)
    calls.set(xlabel="N one-run stops at once", ylabel="upstream calls", yscale="log")
    wall.set(xlabel="N one-run stops at once", ylabel="wall time, s")
    calls.set_title("calls reaching dstack")
    wall.set_title("until every caller has its answer")
    wall.legend()
    for ax in (calls, wall):
        ax.grid(alpha=0.3)
    _save(fig, path)


def policies(data: Data, path: Path) -> None:
    """What each flush policy adds to a lone stop, p50 and p99, with the 1 ms target."""
    lone = lone_figures(data)
    names = [n for n in lone if n != "direct"]
    fig, ax = plt.subplots(figsize=(6, 4))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [lone[n]["added_p50"] for n in names], 0.4, label="p50")
    ax.bar([i + 0.2 for i in x], [lone[n]["added_p99"] for n in names], 0.4, label="p99")
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="target: 1 ms at p50")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(list(x), names)
    ax.set(ylabel="ms added over direct", title="a lone stop: latency the proxy adds")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def passthrough(data: Data, path: Path) -> None:
    """Requests per second of each pass-through against the same fast upstream."""
    fig_data = passthrough_figures(data)
    names = [n for n in fig_data if n != "direct"]
    fig, ax = plt.subplots(figsize=(6, 4))
    bars = ax.bar(names, [fig_data[n]["rps"] for n in names])
    ax.bar_label(bars, fmt="%.0f")
    ax.set(ylabel="requests/s (wrk -t1 -c32, small POST)", title="pass-through, one process each")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def draw_all(data: Data, docs: Path) -> list[Path]:
    paths = [docs / BATCH_PLOT, docs / POLICY_PLOT, docs / PASSTHROUGH_PLOT]
    for draw, path in zip((batching, policies, passthrough), paths, strict=True):
        draw(data, path)
    return paths


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
