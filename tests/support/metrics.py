"""Reading the proxy's own metrics from its admin listener (Prometheus text format)."""

from __future__ import annotations

import urllib.request

# The gauge of callers waiting for a batch, and of per-key batch state. Named with the batch
# vocabulary; the older `proxy_coalesce_pending` is read until the renaming lands.
PENDING = ("proxy_batch_pending", "proxy_coalesce_pending")
KEYS = ("proxy_batch_keys",)


def read_metrics(admin_url: str) -> dict[str, float]:
    """`{sample: value}` with the labels as written, e.g. `proxy_requests_total{...}`."""
    with urllib.request.urlopen(admin_url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def gauge(samples: dict[str, float], names: tuple[str, ...]) -> float | None:
    """The first of `names` that is exported, or None if none is."""
    return next((samples[n] for n in names if n in samples), None)
