"""A refusal about the key, not the names, against a REAL dstack server: every caller gets
dstack's own answer, and the proxy stops bisecting as soon as both halves get the same one."""

from __future__ import annotations

import pytest

from tests.support.bursts import burst
from tests.support.server import DstackServer
from tests.support.versions import CURRENT_VERSION

STOP = "/api/project/main/runs/stop"


# 0.18.40 refuses a bad version in a middleware that its request log never sees, so the calls
# cannot be counted there (docs/dstack-api.md, "Differences in 0.18.40").
@pytest.mark.server_versions(CURRENT_VERSION)
async def test_an_incompatible_api_version_costs_a_few_calls_not_one_per_caller(
    dstack_server: DstackServer, proxy_url: str
) -> None:
    # A client newer than the server is refused with 400 whatever it names (docs/dstack-api.md,
    # API versions). Before, 16 such callers cost 25 calls (bisection to the leaves).
    version = {"X-API-Version": "99.0.0"}
    token = dstack_server.admin_token
    bodies = [{"runs_names": [f"never-{i}"], "abort": False} for i in range(16)]
    mark = dstack_server.log_mark()
    direct = (await burst(dstack_server.url, STOP, bodies[:1], token, version))[0]
    assert direct[0] == 400
    assert dstack_server.count_requests("/runs/stop", since=mark) == 1  # refusals are counted

    mark = dstack_server.log_mark()
    answers = await burst(proxy_url, STOP, bodies, token, version)
    calls = dstack_server.count_requests("/runs/stop", since=mark)

    assert answers == [direct] * 16  # dstack's own status and bytes, for every caller
    # One batch: the call, then its two halves, which get the same refusal: 3. The first
    # request may leave alone on a quiet key (policy adaptive): then 1 + 3.
    assert calls <= 4, calls
