"""The event-loop task gauge counts the tasks alive on the loop it is scraped from; the
lock-free counter and histogram render exactly what prometheus_client's own would."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from proxy.ops.metrics import LoopCounter, LoopHistogram, Metrics

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)


def _samples(registry: CollectorRegistry) -> list[str]:
    """The exposition's sample lines, but prometheus_client's `_created` timestamps."""
    text = generate_latest(registry).decode()
    return sorted(
        x for x in text.splitlines() if x and not x.startswith("#") and "_created" not in x
    )


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["passthrough", "batch"]),
            st.one_of(st.sampled_from(BUCKETS), st.floats(0, 100, allow_nan=False)),
        ),
        max_size=50,
    )
)
def test_loop_histogram_renders_like_prometheus_clients(
    observations: list[tuple[str, float]],
) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LoopHistogram("h_seconds", "doc", "kind", BUCKETS)
    ours.register(mine)
    reference = Histogram("h_seconds", "doc", ["kind"], buckets=BUCKETS, registry=theirs)
    for kind, value in observations:
        mine.labels(kind).observe(value)
        reference.labels(kind).observe(value)
    assert _samples(ours) == _samples(theirs)


@given(st.lists(st.tuples(st.sampled_from(["api", "static"]), st.sampled_from(["200", "404"]))))
def test_loop_counter_renders_like_prometheus_clients(increments: list[tuple[str, str]]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LoopCounter("c_total", "doc", ("route", "status"))
    ours.register(mine)
    reference = Counter("c_total", "doc", ["route", "status"], registry=theirs)
    for route, status in increments:
        mine.inc(route, status)
        reference.labels(route, status).inc()
    assert _samples(ours) == _samples(theirs)


def _tasks(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("dstack_coalescer_event_loop_tasks")
    assert value is not None
    return value


async def test_task_gauge_follows_the_tasks_alive_on_the_loop() -> None:
    metrics = Metrics()
    before = _tasks(metrics)
    gate = asyncio.Event()
    parked = [asyncio.create_task(gate.wait()) for _ in range(25)]
    await asyncio.sleep(0)
    assert _tasks(metrics) == before + 25
    gate.set()
    await asyncio.gather(*parked)
    assert _tasks(metrics) == before


def test_task_gauge_outside_a_loop_is_zero() -> None:
    assert _tasks(Metrics()) == 0
