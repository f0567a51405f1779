"""Prometheus metrics, held per app in their own registry (no module globals), rendered on the
admin listener. Labels stay bounded: route classes and endpoint names, never projects or users."""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
# Client-facing durations reach batch_timeout (30 s) behind a slow dstack, and more for streams.
_DURATION_BUCKETS = (*_LATENCY_BUCKETS, 60, 300)


class Metrics:
    """Every metric the proxy exports."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = LoopCounter(
            "dstack_coalescer_requests_total",
            "Client requests answered, by route class and status",
            ("route", "status"),
        )
        r.register(self.requests)
        self.duration = LoopHistogram(
            "dstack_coalescer_request_duration_seconds",
            "Client-facing time from a request's arrival to its answer, by how it was answered",
            "route",
            _DURATION_BUCKETS,
        )
        r.register(self.duration)
        self.upstream_healthy = Gauge(
            "dstack_coalescer_upstream_healthy",
            "1 when dstack's /healthcheck answered 200 at the last scrape, else 0",
            registry=r,
        )
        # Memory, CPU, open files and start time of this process (process_* on Linux).
        ProcessCollector(registry=r)
        self.in_flight = Gauge(
            "dstack_coalescer_requests_in_flight", "Client requests being handled", registry=r
        )
        self.upstream_latency = LoopHistogram(
            "dstack_coalescer_upstream_latency_seconds",
            "Upstream time to response headers",
            "kind",
            _LATENCY_BUCKETS,
        )
        r.register(self.upstream_latency)
        self.upstream_errors = Counter(
            "dstack_coalescer_upstream_errors_total",
            "Upstream failures by kind",
            ["kind", "code"],
            registry=r,
        )
        self.batched = Counter(
            "dstack_coalescer_batched_requests_total",
            "Requests answered from a batch",
            ["endpoint"],
            registry=r,
        )
        self.batch_calls = Counter(
            "dstack_coalescer_batch_upstream_calls_total",
            "Upstream calls made for batches: first call, later split or round, probe",
            ["endpoint", "purpose"],
            registry=r,
        )
        self.calls_saved = Counter(
            "dstack_coalescer_batch_calls_saved_total",
            "Requests minus upstream calls, per batch",
            ["endpoint"],
            registry=r,
        )
        self.batch_size = Histogram(
            "dstack_coalescer_batch_size",
            "Requests per flushed batch",
            ["endpoint"],
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_wait = Histogram(
            "dstack_coalescer_batch_wait_seconds",
            "Time the oldest request of a batch waited to be sent",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.flushes = Counter(
            "dstack_coalescer_batch_flushes_total",
            "Batches sent, by reason",
            ["endpoint", "reason"],
            registry=r,
        )
        self.expired = Counter(
            "dstack_coalescer_batch_expired_total",
            "Requests answered 503 unsent: max_wait passed behind a flight for their key",
            ["endpoint"],
            registry=r,
        )
        self.bisections = Counter(
            "dstack_coalescer_batch_bisections_total",
            "Batch calls split to isolate a failure",
            ["endpoint"],
            registry=r,
        )
        self.bypasses = Counter(
            "dstack_coalescer_batch_bypass_total",
            "Batchable-path requests passed through singly",
            ["reason"],
            registry=r,
        )
        self.pending = Gauge(
            "dstack_coalescer_batch_pending", "Requests waiting in batches", registry=r
        )
        self.keys = Gauge(
            "dstack_coalescer_batch_keys",
            "Keys with a batch waiting or a flight in the air",
            registry=r,
        )
        self.tasks = Gauge(
            "dstack_coalescer_event_loop_tasks",
            "Tasks alive on the proxy's event loop; growth under steady traffic is a leak",
            registry=r,
        )
        self.tasks.set_function(_live_tasks)
        self.shadow_batches = Counter(
            "dstack_coalescer_shadow_batches_total",
            "Batches shadow mode would have formed",
            ["endpoint"],
            registry=r,
        )
        self.disconnects = Counter(
            "dstack_coalescer_client_disconnects_total",
            "Clients gone before their answer was written",
            ["route"],
            registry=r,
        )
        self.drain_cancelled = Counter(
            "dstack_coalescer_drain_cancelled_total",
            "Requests whose wait the drain deadline ended (answered 504)",
            ["route"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class LoopCounter(Collector):
    """A labelled counter for what every request counts: plain numbers, no lock. The event
    loop's thread is the only one that counts or renders (the admin listener shares the loop),
    and prometheus_client's own Counter takes a lock on every increment (docs/measurements.md)."""

    type = "counter"

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self._name, self._doc, self.labelnames = name, documentation, tuple(labels)
        self.values: dict[tuple[str, ...], int] = {}

    def inc(self, *labels: str) -> None:
        self.values[labels] = self.values.get(labels, 0) + 1

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._doc, labels=self.labelnames)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._doc, labels=self.labelnames)
        for labels, value in self.values.items():
            family.add_metric(labels, value)
        yield family


class LoopHistogram(Collector):
    """A histogram with one label, lock-free for the same reason as `LoopCounter`; each child
    keeps a count per bucket (cumulated when rendered) and a sum."""

    type = "histogram"

    def __init__(self, name: str, documentation: str, label: str, buckets: Sequence[float]):
        self._name, self._doc, self.labelnames = name, documentation, (label,)
        self._bounds = tuple(buckets)
        self._children: dict[str, _HistogramChild] = {}

    def labels(self, value: str) -> _HistogramChild:
        if (child := self._children.get(value)) is None:
            child = self._children[value] = _HistogramChild(self._bounds)
        return child

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self._name, self._doc, labels=self.labelnames)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._doc, labels=self.labelnames)
        for value, child in self._children.items():
            running, buckets = 0, []
            for bound, count in zip((*self._bounds, float("inf")), child.counts, strict=True):
                running += count
                buckets.append((_bound(bound), running))
            family.add_metric((value,), buckets, child.sum)
        yield family


class _HistogramChild:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1  # buckets are "less or equal"
        self.sum += value


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _live_tasks() -> int:
    # Read at scrape time, which happens on the loop (the admin listener shares it).
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # rendered outside a running loop: nothing to count
        return 0
