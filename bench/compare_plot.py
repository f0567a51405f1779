"""docs/bench-versions.png: per dstack version, time until the last caller is answered against
N, for stops and deletes, three ways; and the server's CPU seconds for the stops."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt

from .compare import Comparison
from .compare_cells import VERSIONS_PLOT, WAY_NAMES, cells, sizes

LABELS = {
    "direct singles": "direct, one request each",
    "proxy singles": "through the proxy",
    "direct batch": "one request naming all N",
}
STYLE: dict[str, dict[str, object]] = {
    "direct singles": {"marker": "o", "linestyle": "-"},
    "proxy singles": {"marker": "s", "linestyle": "-", "markersize": 8},
    "direct batch": {"marker": "x", "linestyle": "--"},
}


def draw(c: Comparison, docs: Path) -> None:
    if not c.versions:
        return
    fig, axes = plt.subplots(len(c.versions), 3, figsize=(13, 3.6 * len(c.versions)), squeeze=False)
    for row, v in zip(axes, c.versions, strict=True):
        by, ns = cells(v.at_once), sizes(v)
        for ax, (op, what) in zip(
            row, (("stop", "wall"), ("delete", "wall"), ("stop", "cpu")), strict=True
        ):
            for way in WAY_NAMES:
                xs = [n for n in ns if (op, n, way) in by]
                ys = [
                    by[(op, n, way)].wall_s if what == "wall" else by[(op, n, way)].cpu_s
                    for n in xs
                ]
                ax.plot(xs, ys, label=LABELS[way], **STYLE[way])
            ylabel = "until the last answer, s" if what == "wall" else "server CPU, s"
            ax.set(xlabel=f"N one-run {op}s at once", ylabel=ylabel)
            ax.set_title(f"dstack {v.label}: {op}s, {'time' if what == 'wall' else 'server CPU'}")
            ax.grid(alpha=0.3)
        row[0].legend()
    fig.tight_layout()
    fig.savefig(docs / VERSIONS_PLOT, dpi=100)
    plt.close(fig)
