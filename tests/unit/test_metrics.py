"""The event-loop task gauge counts the tasks alive on the loop it is scraped from."""

from __future__ import annotations

import asyncio

from proxy.metrics import Metrics


def _tasks(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("proxy_event_loop_tasks")
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
