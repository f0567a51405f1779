"""What the tests, the benchmarks (bench/) and the demo share: the real things they run and
drive. A real dstack server (`server.py`; Postgres-backed through `DstackServer(database=
"postgres")`, a throw-away cluster from `postgres.py`), its HTTP API (`api.py`), runs that stay
active without any cloud (`runs.py`), bursts of concurrent requests and the server's record of
stops (`bursts.py`), raw HTTP over a socket (`rawhttp.py`), the server versions and the legacy
0.18.40 environment (`versions.py`, with `legacy_sdk.py` run by that environment's interpreter),
the one way to start and stop a child process, the proxy's included (`processes.py`), upstreams
of our own (`fast_upstream.py`, answering at once; `slow_upstream.py`, recording and holding its
calls), nginx in the roles the benchmarks and the tests give it (`nginx.py`), and the proxy's own
metrics (`metrics.py`).

Standard library plus the project's own dependencies; no pytest, so scripts can use it too.
Server-side helpers are synchronous and blocking: from async code call them through
`asyncio.to_thread`. Checked against dstack 0.22.5 and 0.18.40. Never shipped: the image and
the wheel hold `proxy/` only.
"""
