"""Test support for every tier, the benchmarks and the demo: a real dstack server
(`server.py`), its HTTP API (`api.py`), runs that stay active without any cloud (`runs.py`), its
CLI (`cli.py`), bursts of concurrent requests and the server's record of stops (`bursts.py`),
and the one way to start and stop a child process (`processes.py`). For the adversarial suites:
the server versions and the legacy 0.18.40 environment (`versions.py`, with `legacy_sdk.py` run
by that environment's interpreter), raw HTTP over a socket (`rawhttp.py`), a recording upstream
that can hold its calls (`slow_upstream.py`) and the proxy's own metrics (`metrics.py`). A
throw-away PostgreSQL cluster for a Postgres-backed server (`postgres.py`, used through
`DstackServer(database="postgres")`).

Standard library plus the project's own dependencies; no pytest, so scripts can use it too.
Server-side helpers are synchronous and blocking: from an async test call them through
`asyncio.to_thread`. Checked against dstack 0.22.5 and 0.18.40.
"""
