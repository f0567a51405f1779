"""Where dstack 0.22.5 and 0.18.40 answer differently (docs/dstack-api.md, "Differences in
0.18.40"), each version's own answer, checked through the proxy and straight at the server:
the proxy relays both versions as they are, with no special case for either."""

from __future__ import annotations

import aiohttp
import pytest

from harness.server import DstackServer
from harness.versions import CURRENT_VERSION, LEGACY_VERSION

STOP = "/api/project/main/runs/stop"
X = b'{"runs_names": ["x"], "abort": false}'

# (name, path, body, extra headers, {version: (status, body or None to check the status only)})
DIFFERENCES: list[tuple[str, str, bytes, dict[str, str], dict[str, tuple[int, bytes | None]]]] = [
    (
        "bad api version",
        STOP,
        X,
        {"X-API-Version": "garbage!"},
        {
            CURRENT_VERSION: (400, b'{"detail":[{"msg":"Invalid version: garbage!","code":null}]}'),
            LEGACY_VERSION: (
                400,
                b'{"detail":[{"msg":"Bad API version specified","code":"error"}]}',
            ),
        },
    ),
    (
        "empty api version",
        STOP,
        X,
        {"X-API-Version": ""},
        {
            CURRENT_VERSION: (400, b'{"detail":[{"msg":"Invalid version: ","code":null}]}'),
            LEGACY_VERSION: (
                400,
                b'{"detail":[{"msg":"Bad API version specified","code":"error"}]}',
            ),
        },
    ),
    (
        "missing field",
        STOP,
        b'{"runs_names": ["x"]}',
        {},
        {
            CURRENT_VERSION: (
                422,
                b'{"detail":[{"type":"missing","loc":["body","abort"],"msg":"Field required",'
                b'"input":{"runs_names":["x"]}}]}',
            ),
            LEGACY_VERSION: (
                422,
                b'{"detail":[{"loc":["body","abort"],"msg":"field required",'
                b'"type":"value_error.missing"}]}',
            ),
        },
    ),
    (
        "NaN in a body",
        STOP,
        b'{"runs_names": ["x"], "abort": false, "n": NaN}',
        {},
        {
            CURRENT_VERSION: (500, b"Internal Server Error"),
            LEGACY_VERSION: (
                422,
                b'{"detail":[{"loc":["body","n"],"msg":"extra fields not permitted",'
                b'"type":"value_error.extra"}]}',
            ),
        },
    ),
    (
        "unknown secret",
        "/api/project/main/secrets/delete",
        b'{"secrets_names": ["no-such-secret"]}',
        {},
        {
            CURRENT_VERSION: (
                400,
                b'{"detail":[{"msg":"Secrets not found: no-such-secret",'
                b'"code":"resource_not_exists"}]}',
            ),
            LEGACY_VERSION: (
                422,
                b'{"detail":[{"loc":["body","repo_id"],"msg":"field required",'
                b'"type":"value_error.missing"}]}',
            ),
        },
    ),
    (
        "runs list with include_jobs",
        "/api/runs/list",
        b'{"project_name": "main", "include_jobs": false, "limit": 1}',
        {},
        {CURRENT_VERSION: (200, None), LEGACY_VERSION: (422, None)},
    ),
    (
        "events api",
        "/api/events/list",
        b'{"limit": 1}',
        {},
        {CURRENT_VERSION: (200, None), LEGACY_VERSION: (405, b'{"detail":"Method Not Allowed"}')},
    ),
    (
        "add_members",
        "/api/projects/main/add_members",
        b'{"members": []}',
        {},
        {CURRENT_VERSION: (200, None), LEGACY_VERSION: (405, b'{"detail":"Method Not Allowed"}')},
    ),
]


@pytest.mark.parametrize("case", DIFFERENCES, ids=[d[0] for d in DIFFERENCES])
async def test_each_version_gets_its_own_answer_through_the_proxy(
    dstack_server: DstackServer,
    proxy_url: str,
    case: tuple[str, str, bytes, dict[str, str], dict[str, tuple[int, bytes | None]]],
) -> None:
    _, path, body, extra, expected = case
    headers = {
        "Authorization": f"Bearer {dstack_server.admin_token}",
        "Content-Type": "application/json",
        **extra,
    }
    answers = []
    async with aiohttp.ClientSession() as session:
        for base in (dstack_server.url, proxy_url):
            async with session.post(base + path, data=body, headers=headers) as resp:
                answers.append((resp.status, await resp.read()))
    status, exact = expected[dstack_server.version]
    assert answers[1] == answers[0]
    assert answers[0][0] == status
    if exact is not None:
        assert answers[0][1] == exact
