"""The Grafana dashboard (deploy/grafana/dashboard.json) asks only for what the proxy exports: a
running proxy (its own process, in front of a fast fake upstream) is scraped on its admin
/metrics, and every metric and label a panel query names must be there."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import Metric, ProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from harness.processes import FastUpstream, ProxyProcess
from proxy.ops.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboard.json"
ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yaml"
# Labels Prometheus adds to every scraped series, and the histogram bucket bound.
TARGET_LABELS = {"instance", "job"}
_METRIC = re.compile(r"\b(?:dstack_coalescer|process)_[a-z0-9_]+\b")
_BY = re.compile(r"\bby\s*\(([^)]*)\)\s*\(")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in _panels(dashboard["panels"]) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["query"]["query"])
    # The example alerting rules shipped beside it ask only for exported metrics too.
    rules = yaml.safe_load(ALERTS.read_text())
    exprs += [r["expr"] for group in rules["groups"] for r in group["rules"]]
    return exprs


def _series(family: Metric) -> set[str]:
    """The names of the series a family is scraped as."""
    if family.type == "counter":
        return {family.name + "_total", family.name + "_created"}
    if family.type == "histogram":
        return {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
    return {family.name}


def _argument(expr: str, start: int) -> str:
    """The parenthesised argument that opens just before `start`."""
    depth = 1
    for i in range(start, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[i], 0)
        if depth == 0:
            return expr[start:i]
    raise AssertionError(f"unbalanced parentheses in {expr!r}")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Metric]:
    """The families a running proxy exports, after traffic that fills the batch metrics."""
    logs = tmp_path_factory.mktemp("dashboard")
    with (
        FastUpstream(logs / "upstream.log") as upstream,
        ProxyProcess(upstream.url, logs / "proxy.log") as proxy,
    ):
        asyncio.run(_traffic(proxy.url))
        with urllib.request.urlopen(proxy.admin_url + "/metrics", timeout=5) as r:
            text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


async def _traffic(base: str) -> None:
    stop = base + "/api/project/main/runs/stop"
    headers = {"Authorization": "Bearer t", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:

        async def post(body: bytes) -> None:
            async with session.post(stop, data=body, headers=headers) as resp:
                assert resp.status == 200, await resp.text()

        bodies = [b'{"runs_names": ["r%d"], "abort": false}' % i for i in range(10)]
        await asyncio.gather(*(post(b) for b in bodies))
        await post(b'{"runs_names": []}')  # not mergeable: a bypass


def test_every_metric_a_panel_queries_is_exported(exported: dict[str, Metric]) -> None:
    names = set().union(*(_series(f) for f in exported.values()))
    used = {m for expr in _queries() for m in _METRIC.findall(expr)}
    assert used, "no proxy metric in any query"
    assert used <= names, sorted(used - names)
    # The traffic really went through the batch path the panels watch.
    # The first stop finds its key idle and goes alone (the panels count it as a bypass).
    batched = next(
        f for f in exported.values() if f.name.startswith("dstack_coalescer_batched_requests")
    )
    bypass = next(
        f for f in exported.values() if f.name.startswith("dstack_coalescer_batch_bypass")
    )
    alone = sum(s.value for s in bypass.samples if s.labels.get("reason") == "alone")
    together = sum(s.value for s in batched.samples if s.name.endswith("_total"))
    assert together > 0 and together + alone == 10


def test_every_exported_metric_has_a_panel(exported: dict[str, Metric]) -> None:
    used = {m for expr in _queries() for m in _METRIC.findall(expr)}
    # The text format shows each `_created` timestamp as a family of its own: not a panel's job.
    missing = {
        name
        for name, f in exported.items()
        if not (_series(f) & used) and not name.endswith("_created")
    }
    assert not missing, sorted(missing)


def test_every_label_a_query_groups_or_filters_by_exists() -> None:
    # Label names as the proxy declares them (a labelled metric not used yet has no samples).
    labels: dict[str, set[str]] = {}
    for collector, series in Metrics().registry._collector_to_names.items():
        # prometheus_client's own metrics keep these private; the proxy's LoopCounter and
        # LoopHistogram (proxy/ops/metrics.py) make them public.
        declared = set(
            getattr(collector, "labelnames", None) or getattr(collector, "_labelnames", ())
        )
        if (getattr(collector, "type", None) or getattr(collector, "_type", "")) == "histogram":
            declared.add("le")
        labels.update(dict.fromkeys(series, declared | TARGET_LABELS))
    # The process collector describes nothing before it collects (Linux: /proc).
    for family in ProcessCollector(registry=None).collect():
        for sample in family.samples:
            labels[sample.name] = set(sample.labels) | TARGET_LABELS
    for expr in _queries():
        for m in _BY.finditer(expr):
            grouped = {x.strip() for x in m.group(1).split(",") if x.strip()}
            for metric in _METRIC.findall(_argument(expr, m.end())):
                assert grouped <= labels[metric], (expr, metric, grouped - labels[metric])
        for selector in re.finditer(r"((?:dstack_coalescer|process)_[a-z0-9_]+)\{([^}]*)\}", expr):
            used = set(_MATCHER.findall(selector.group(2)))
            assert used <= labels[selector.group(1)], (expr, used)


def test_the_red_panels_read_the_client_facing_duration_by_route(
    exported: dict[str, Metric],
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    by_title = {p["title"]: p for p in _panels(dashboard["panels"])}
    rate = by_title["Request rate by route"]["targets"][0]["expr"]
    errors = by_title["Error ratio"]["targets"][0]["expr"]
    duration = [t["expr"] for t in by_title["Request duration by route"]["targets"]]
    assert "dstack_coalescer_request_duration_seconds_count" in rate and "by (route)" in rate
    assert 'status=~"5.."' in errors and errors.count("dstack_coalescer_requests_total") == 2
    assert all("by (le, route)" in e for e in duration)
    assert "process_resident_memory_bytes" in by_title["Memory per replica"]["targets"][0]["expr"]
    # The traffic's stops were answered batched and alone, its bypass passed through: each
    # route the panels split by has its own series, one observation per request.
    family = exported["dstack_coalescer_request_duration_seconds"]
    counts = {s.labels["route"]: s.value for s in family.samples if s.name.endswith("_count")}
    assert counts["batched"] + counts["alone"] == 10 and counts["passthrough"] >= 1, counts
    assert counts["batched"] > 0
