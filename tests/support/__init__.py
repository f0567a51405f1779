"""Test support for every tier, the benchmarks and the demo: a real dstack server
(`server.py`), its HTTP API (`api.py`), runs that stay active without any cloud (`runs.py`), its
CLI (`cli.py`), bursts of concurrent requests and the server's record of stops (`bursts.py`),
and the one way to start and stop a child process (`processes.py`).

Standard library plus the project's own dependencies; no pytest, so scripts can use it too.
Server-side helpers are synchronous and blocking: from an async test call them through
`asyncio.to_thread`. Checked against dstack 0.22.5.
"""
