"""The benchmark's readers of other tools' output (wrk, py-spy): wrong figures would go
unnoticed in docs/measurements.md, so they are checked here. No timing is asserted."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from bench.bulk import Phase
from bench.hotspots import summarise
from bench.report import measurements_md
from bench.report_policies import bound_100, median_wall
from bench.report_policies_legacy import legacy_policy_section
from bench.results import Run
from bench.workload import Measured
from bench.wrk import WrkResult, parse

WRK_OUT = """Running 5s test @ http://127.0.0.1:8080/api/runs/list
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.43ms    2.10ms  40.01ms   90.00%
    Req/Sec     5.01k   300.00     5.50k    70.00%
  Latency Distribution
     50%  612.00us
     75%    7.00ms
     90%    8.00ms
     99%    1.20s
  24950 requests in 5.00s, 3.50MB read
Requests/sec:   4990.12
Transfer/sec:    716.00KB
"""


def test_wrk_summary_in_milliseconds_whatever_the_unit() -> None:
    result = parse(WRK_OUT)
    assert result.requests_per_s == 4990.12
    assert result.requests == 24950
    assert result.p50_ms == pytest.approx(0.612)
    assert result.p99_ms == pytest.approx(1200.0)


def test_wrk_errors_refuse_the_figure() -> None:
    with pytest.raises(RuntimeError, match="errors under load"):
        parse(WRK_OUT.replace("Requests/sec", "  Non-2xx or 3xx responses: 7\nRequests/sec"))
    with pytest.raises(RuntimeError, match="no Requests/sec"):
        parse("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_wrk_without_latency_lines_gives_nan_not_zero() -> None:
    out = "\n".join(ln for ln in WRK_OUT.splitlines() if "%" not in ln)
    assert math.isnan(parse(out).p50_ms)


def test_py_spy_samples_by_package_and_concern() -> None:
    root = "_run_once (asyncio/base_events.py:1922);Handle._run (asyncio/events.py:80)"
    raw = "\n".join(
        [
            f"{root};forward (proxy/forwarding.py:50);ClientSession._request "
            "(/v/lib/aiohttp/client.py:700) 6",
            f"{root};forward (proxy/forwarding.py:50);log (proxy/x.py:3);"
            "BoundLogger.info (structlog/_native.py:10) 3",
            f"{root} 1",
        ]
    )
    result = summarise(raw)
    assert result.samples == 10
    assert dict(result.self) == {
        "aiohttp client (client*, connector)": 0.6,
        "structlog": 0.3,
        "asyncio (event loop, sockets)": 0.1,
    }
    concerns = dict(result.inclusive)
    assert concerns["the upstream call (aiohttp client)"] == 0.6
    assert concerns["logging (structlog, logging)"] == 0.3
    assert concerns["metrics (prometheus_client)"] == 0
    assert dict(result.proxy_functions) == {"forward": 0.9, "log": 0.3}


def test_the_saved_run_reads_back_typed_and_round_trips() -> None:
    raw = json.loads((Path(__file__).parents[2] / "docs" / "measurements.json").read_text())
    run = Run.from_json(raw)
    assert isinstance(run.passthrough.latency["proxy"], WrkResult)
    assert isinstance(run.policies.policies["quiet"].at_once_20[0], Measured)
    assert run.profile is not None and run.profile.bare.cpu_us > 0
    assert run.compare is not None and isinstance(run.compare.versions[0].at_once[0], Phase)
    assert all(isinstance(n, int) for n in run.compare.settings.rounds)
    assert Run.from_json(json.loads(json.dumps(dataclasses.asdict(run)))) == run


def test_the_policies_on_the_legacy_server_get_a_table_of_their_own() -> None:
    raw = json.loads((Path(__file__).parents[2] / "docs" / "measurements.json").read_text())
    run = dataclasses.replace(Run.from_json(raw), legacy_policies=None)
    assert legacy_policy_section(run) == ""
    assert "The same policies on dstack 0.18.40" not in measurements_md(run)
    pol = run.policies
    run.legacy_policies = pol  # the 0.22.5 figures stand in: only the rendering is checked
    text = legacy_policy_section(run)
    bound = bound_100(pol)
    assert f"within {bound:.3f} s (median)" in text
    row = next(line for line in text.splitlines() if line.startswith("| quiet (default) |"))
    quiet = pol.policies["quiet"]
    calls = "/".join(str(r.upstream_calls) for r in quiet.six_connections_20)
    assert f"| {calls}; " in row
    met = "yes" if median_wall(quiet.at_once_100) <= bound else "**no**"
    assert row.endswith(f"| {met} |")
    assert "### The same policies on dstack 0.18.40" in measurements_md(run).split("## 2.")[0]
