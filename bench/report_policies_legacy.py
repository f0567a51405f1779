"""docs/measurements.md, section 1, on dstack 0.18.40 too (issue 14): the flush policies side by
side on the server whose calls take long, from `policies.run_shapes`."""

from __future__ import annotations

import statistics

from .report_policies import (
    bound_100,
    median_wall,
    paired_interval,
    policy_lone_figures,
    shape_cells,
)
from .report_text import para, yes
from .results import Run


def legacy_policy_section(run: Run) -> str:
    """The policies on dstack 0.18.40, or nothing if the run did not measure them."""
    pol = run.legacy_policies
    if pol is None or not pol.direct_batch_100:
        return ""
    unknown = policy_lone_figures(pol, "unknown")
    bound = bound_100(pol)
    lines = [
        "| policy | absent run: added p50; paired [95%] ms | 20 at once: calls; wall s "
        "| 20 over 6 conns: calls; wall s | 100 at once: calls; wall s "
        f"| 100 at once within {bound:.3f} s (median) |",
        "|---|---|---|---|---|---|",
        f"| direct (no proxy) | (p50 {unknown['direct'].p50:.2f}) | 20 | 20 | 100 | |",
    ]
    for name, fig in pol.policies.items():
        cells = shape_cells(fig)
        default = " (default)" if name == run.settings.default_policy else ""
        lines.append(
            f"| {name}{default} | {unknown[name].added_p50:+.2f}; "
            f"{paired_interval(unknown[name], 2)} | "
            + " | ".join(cells)
            + f" | {yes(median_wall(fig.at_once_100) <= bound)} |"
        )
    rounds = len(pol.direct_batch_100)
    return "\n".join(
        [
            "### The same policies on dstack 0.18.40",
            "",
            para(
                "On a fresh 0.18.40 server of their own (a stop takes about 0.23 s there), the "
                f"same shapes, {rounds} round(s), policies interleaved, each on fresh runs; and "
                f"{unknown['direct'].n} lone stops per target naming runs that do not exist, "
                "interleaved as above. No lone stops of fresh runs (this server's jitter is "
                "several milliseconds) and no instant upstream (what the proxy itself adds does "
                "not depend on the server behind it). N = 100 bound: one direct 100-name stop "
                f"({median_wall(pol.direct_batch_100):.3f} s) plus 100 one-run stops at once "
                f"against a server that answers at once ({statistics.median(pol.fast_100_s):.3f}"
                f" s) = **{bound:.3f} s**.",
            ),
            "",
            *lines,
        ]
    )
