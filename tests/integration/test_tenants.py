"""Tenants never mix, as a property: random interleavings of batchable requests carrying
several tokens, cookies, projects (case and percent-encoding variants) and API versions, sent
through the proxy (its own process, logging at debug level) to a recording upstream.

No upstream call may carry requests of two credentials, two projects or two API versions; each
caller gets the answer of its own credential; and no token or cookie ever reaches a log line."""

from __future__ import annotations

import asyncio
import itertools
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import aiohttp
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.processes import ProxyProcess, SlowUpstream
from harness.rawhttp import exchange
from tests.support.modes import examples

# Distinctive values, so a search of the log cannot miss them or find them by chance.
TOKENS = ("member-7f3a9c2e51", "member-0b8d4e6f93", "outsider-c41d7a2b08")
AUTHORIZATIONS = (
    None,
    *(f"Bearer {t}" for t in TOKENS),
    f"bearer {TOKENS[0]}",  # the scheme in another case: another header, another key
    f"Bearer  {TOKENS[1]}",
)
COOKIES = (None, "session=ck-5e2a91f0d7", "session=ck-a83c06b4e1; theme=dark")
SECRETS = (*TOKENS, "ck-5e2a91f0d7", "ck-a83c06b4e1")
PROJECTS = ("main", "MAIN", "Main", "m%61in", "other", "OTHER", "%6Fther")
VERSIONS = (None, "", "0.22.5", "0.18.40")
DENIED = b'{"detail":[{"msg":"Access denied","code":null}]}'
_examples = itertools.count()


@dataclass(frozen=True)
class Request:
    op: str
    abort: bool
    project: str
    authorization: str | None
    cookie: str | None
    version: str | None
    delay_ms: int

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        for name, value in (
            ("Authorization", self.authorization),
            ("Cookie", self.cookie),
            ("X-API-Version", self.version),
        ):
            if value is not None:
                headers[name] = value
        return headers

    @property
    def answer(self) -> tuple[int, bytes]:
        """What the recording upstream answers this credential alone."""
        token = (self.authorization or "").removeprefix("Bearer ")
        return (403, DENIED) if token.startswith("outsider") else (200, b"null")


requests = st.builds(
    Request,
    op=st.sampled_from(("stop", "delete")),
    abort=st.booleans(),
    project=st.sampled_from(PROJECTS),
    authorization=st.sampled_from(AUTHORIZATIONS),
    cookie=st.sampled_from(COOKIES),
    version=st.sampled_from(VERSIONS),
    delay_ms=st.integers(0, 30),
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SlowUpstream, ProxyProcess]]:
    logs = tmp_path_factory.mktemp("tenants")
    with (
        SlowUpstream(logs / "upstream.log", delay=0.005) as upstream,
        ProxyProcess(upstream.url, logs / "proxy.log", "--log-level", "debug") as proxy,
    ):
        yield upstream, proxy


async def _send_all(base: str, batch: list[Request], tag: str) -> list[tuple[int, bytes]]:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True),
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:

        async def one(i: int, r: Request) -> tuple[int, bytes]:
            await asyncio.sleep(r.delay_ms / 1000)
            body: dict[str, object] = {"runs_names": [f"{tag}-{i}"]}
            if r.op == "stop":
                body["abort"] = r.abort
            async with session.post(
                f"{base}/api/project/{r.project}/runs/{r.op}",
                data=orjson.dumps(body),
                headers=r.headers(),
            ) as resp:
                return resp.status, await resp.read()

        return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(batch))))


def _calls(upstream: SlowUpstream) -> list[dict[str, object]]:
    with urllib.request.urlopen(upstream.url + "/_calls", timeout=10) as resp:
        return list(orjson.loads(resp.read()))


def _project(path: str) -> str:
    # dstack matches the project segment percent-decoded and case-insensitively.
    return unquote(path.split("/")[3]).lower()


@examples(ci=40, long=400)
@given(batch=st.lists(requests, min_size=2, max_size=30))
def test_no_upstream_call_mixes_credentials_projects_or_versions(
    stack: tuple[SlowUpstream, ProxyProcess], batch: list[Request]
) -> None:
    upstream, proxy = stack
    tag = f"e{next(_examples)}"
    answers = asyncio.run(_send_all(proxy.url, batch, tag))
    calls = _calls(upstream)

    assert answers == [r.answer for r in batch]
    reached: list[int] = []
    for call in calls:
        names = call["body"]["runs_names"]  # type: ignore[index]
        members = [batch[int(n.removeprefix(f"{tag}-"))] for n in names]
        reached += [int(n.removeprefix(f"{tag}-")) for n in names]
        path = str(call["path"])
        assert {(r.op, r.abort if r.op == "stop" else None) for r in members} == {
            (path.rsplit("/", 1)[1], call["body"].get("abort"))  # type: ignore[union-attr]
        }
        assert {_project(f"/api/project/{r.project}") for r in members} == {_project(path)}
        assert {(r.authorization, r.cookie, r.version) for r in members} == {
            (call["authorization"], call["cookie"], call["version"])
        }
    assert sorted(reached) == list(range(len(batch)))  # each caller's names went up once


def test_no_token_or_cookie_reaches_the_log(stack: tuple[SlowUpstream, ProxyProcess]) -> None:
    _, proxy = stack
    batch = [
        Request("stop", False, "main", a, c, None, 0)
        for a, c in itertools.product(AUTHORIZATIONS, COOKIES)
    ]
    asyncio.run(_send_all(proxy.url, batch, "log"))
    # Pass-through too, with the credential in the odd places a client might put it.
    for secret in SECRETS:
        req = urllib.request.Request(
            f"{proxy.url}/api/users/get_my_user",
            data=b"{}",
            headers={"Authorization": f"Bearer {secret}", "Cookie": f"token={secret}"},
        )
        urllib.request.urlopen(req, timeout=10).read()
    # Malformed requests whose offending line holds the credential: the parser's error quotes it.
    for secret in SECRETS:
        for bad in (
            f"Authorization: Bearer\r\n {secret}",  # obs-fold
            f"Authorization: Bearer {secret}\x01",  # a control character after the token
            f"Cookie: a={secret}\r\nContent-Length: 1\r\nContent-Length: 2",
        ):
            raw = f"POST /api/project/main/runs/stop HTTP/1.1\r\nHost: x\r\n{bad}\r\n\r\n"
            answer = asyncio.run(exchange("127.0.0.1", proxy.port, raw.encode()))
            assert answer.status == 400, answer
    proxy.stop()  # flushes every line
    log = Path(proxy.log).read_text()
    assert '"batch_flushed"' in log and "Error handling request" in log  # what was sent, logged
    assert [s for s in SECRETS if s in log] == []
