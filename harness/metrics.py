"""Reading the proxy's own metrics from its admin listener (Prometheus text format)."""

from __future__ import annotations

import time
import urllib.request

PENDING = "dstack_coalescer_batch_pending"  # callers waiting for a batch's answer
KEYS = "dstack_coalescer_batch_keys"  # keys with a batch waiting or a flight in the air
# Requests answered through a batch, by endpoint.
BATCHED = "dstack_coalescer_batched_requests_total"


def batched(admin_url: str, timeout: float = 10.0) -> float:
    """Requests answered through the batch path so far, every endpoint, once no flight is in
    the air: a flight records its metrics after it has answered its callers."""
    deadline = time.monotonic() + timeout
    while True:
        samples = read_metrics(admin_url)
        if not samples.get(KEYS, 0.0) or time.monotonic() > deadline:
            return sum(v for k, v in samples.items() if k.startswith(BATCHED + "{"))
        time.sleep(0.02)


def read_metrics(admin_url: str) -> dict[str, float]:
    """`{sample: value}` with the labels as written, e.g. `dstack_coalescer_requests_total{...}`."""
    with urllib.request.urlopen(admin_url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def total(admin_url: str, name: str) -> float:
    """The sum of every sample of the metric `name`, whatever its labels."""
    return sum(
        v for k, v in read_metrics(admin_url).items() if k == name or k.startswith(name + "{")
    )
