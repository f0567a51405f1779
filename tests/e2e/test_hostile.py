"""Hostile input against a REAL dstack server: each case sends the same bytes straight to dstack
and through the proxy over a raw socket and compares status, content type and body. Where the
proxy must refuse before dstack sees anything (framing, request targets) it answers a 4xx of
its own. A 5xx is only ever dstack's own, relayed; the proxy never crashes, and the next good
request is answered as before.

The outcomes observed on both server versions are listed in docs/hostile-inputs.md."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.api import create_project
from harness.bursts import in_a_burst, raw_burst
from harness.metrics import batched
from harness.processes import ProxyProcess
from harness.rawhttp import Chunk, RawAnswer, exchange
from harness.runs import create_active_runs, stop_runs_until_finished
from harness.server import DstackServer
from harness.versions import LEGACY_VERSION
from proxy.batching.endpoints import parse_body
from proxy.config import Config
from tests.support.modes import examples

PROJECT = "hostile"
ACTIVE = "hostile-active"  # a run that must not be deleted: makes a wrong parse visible
STOP = f"/api/project/{PROJECT}/runs/stop"
DELETE = f"/api/project/{PROJECT}/runs/delete"
TOKEN = b"@TOKEN@"

Same = "same"  # proxied answer == direct answer
Own400 = 400  # the proxy refuses first, with this status of its own


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes  # a whole request; TOKEN stands for the admin token
    expect: str | int = Same
    half_close: bool = False  # shut the write side after sending
    trickle: int = 0  # send the first `trickle` bytes one at a time, 10 ms apart
    pause_before: bytes = b""  # wait 0.3 s before sending these bytes and the rest
    legacy: str | int | None = None  # what to expect instead in front of dstack 0.18.40


def post(path: str, body: bytes, *headers: bytes, length: bytes | None = None) -> bytes:
    """A POST with the admin token (`TOKEN` is replaced per server) and `Connection: close`;
    `Content-Length` is the body's unless `length` says otherwise (`b""`: none at all)."""
    cl = length if length is not None else b"%d" % len(body)
    lines = [
        b"POST " + path.encode("utf-8", "surrogateescape") + b" HTTP/1.1",
        b"Host: localhost",
        b"Authorization: Bearer " + TOKEN,
        b"Content-Type: application/json",
        *([b"Content-Length: " + cl] if cl else []),
        *headers,
        b"Connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def names_body(names: list[str]) -> bytes:
    return json.dumps({"runs_names": names, "abort": False}).encode()


STOP_X = b'{"runs_names": ["x"], "abort": false}'
SMUGGLED = (
    b"POST /api/project/hostile/runs/delete HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
)
LEN_X = b"%d" % len(STOP_X)
CHUNKED_X = b"%x\r\n%s\r\n0\r\n\r\n" % (len(STOP_X), STOP_X)

CASES = [
    # Bodies of a batchable endpoint.
    Case("malformed json", post(STOP, b'{"runs_names": [')),
    Case("wrong list type", post(STOP, b'{"runs_names": "x", "abort": false}')),
    Case("wrong flag type", post(STOP, b'{"runs_names": ["x"], "abort": "maybe"}')),
    Case("null list", post(STOP, b'{"runs_names": null, "abort": false}')),
    Case("extra field", post(STOP, b'{"runs_names": ["x"], "abort": false, "zz": [1]}')),
    Case("empty list", post(STOP, b'{"runs_names": [], "abort": false}')),
    Case("empty list, delete", post(DELETE, b'{"runs_names": []}')),
    Case("10 000 names", post(STOP, names_body([f"ghost-{i}" for i in range(10_000)]))),
    Case(
        "1 000 names (under the body cap)", post(STOP, names_body([f"g{i}" for i in range(1000)]))
    ),
    Case("very long name (60 KB)", post(STOP, names_body(["n" * 60_000]))),
    Case("very long name (1 MB)", post(STOP, names_body(["n" * 1_000_000]))),
    Case("non-UTF-8 bytes", post(STOP, b'{"runs_names": ["\xff\xfe\xc3"], "abort": false}')),
    Case("lone surrogate escape", post(STOP, b'{"runs_names": ["\\ud800"], "abort": false}')),
    Case("UTF-8 BOM", post(STOP, b"\xef\xbb\xbf" + STOP_X)),
    Case("NaN", post(STOP, b'{"runs_names": ["x"], "abort": false, "n": NaN}')),
    Case("huge number", post(STOP, b'{"runs_names": ["x"], "abort": false, "n": 1e999}')),
    Case(
        "deep nesting",
        post(
            STOP, b'{"runs_names": ["x"], "abort": false, "n": ' + b"[" * 5000 + b"]" * 5000 + b"}"
        ),
    ),
    Case("trailing garbage", post(STOP, STOP_X + b" x")),
    # dstack reads a body's bytes and ignores its Content-Encoding; the proxy must not decode it.
    Case("gzip-encoded body", post(STOP, gzip.compress(STOP_X), b"Content-Encoding: gzip")),
    Case("labelled gzip, not gzip", post(STOP, STOP_X, b"Content-Encoding: gzip")),
    Case("labelled br", post(STOP, STOP_X, b"Content-Encoding: br")),
    Case("numbers as names", post(STOP, b'{"runs_names": [1, 2], "abort": false}')),
    Case("number as flag", post(STOP, b'{"runs_names": ["x"], "abort": 0}')),
    Case(
        "float as instance number",
        post(
            f"/api/project/{PROJECT}/fleets/delete_instances",
            b'{"name": "f", "instance_nums": [1.0]}',
        ),
    ),
    Case(
        "string as instance number",
        post(
            f"/api/project/{PROJECT}/fleets/delete_instances",
            b'{"name": "f", "instance_nums": ["1"]}',
        ),
    ),
    # The proxy must read a duplicate key as dstack does (the last wins), or it would delete
    # another run than the caller asked for: here the active run's delete must fail alike.
    Case(
        "duplicate key, active last",
        post(DELETE, b'{"runs_names": ["ghost"], "runs_names": ["hostile-active"]}'),
    ),
    Case(
        "duplicate key, active first",
        post(DELETE, b'{"runs_names": ["hostile-active"], "runs_names": ["ghost"]}'),
    ),
    Case("duplicate flag", post(STOP, b'{"runs_names": ["x"], "abort": true, "abort": false}')),
    # Paths.
    Case("dot-dot segment", post(f"/api/project/{PROJECT}/runs/../runs/stop", STOP_X)),
    Case("dot-dot out of the project", post(f"/api/project/{PROJECT}/../main/runs/stop", STOP_X)),
    Case("encoded dot-dot", post(f"/api/project/{PROJECT}/runs/%2e%2e/runs/stop", STOP_X)),
    Case("percent-encoded project", post("/api/project/h%6Fstile/runs/stop", STOP_X)),
    Case("encoded slash in project", post("/api/project/host%2File/runs/stop", STOP_X)),
    Case(
        "encoded slash, other project", post("/api/project/main%2F..%2Fhostile/runs/stop", STOP_X)
    ),
    Case("project in other case", post("/api/project/HOSTILE/runs/stop", STOP_X)),
    Case("double slash in path", post(f"/api//project/{PROJECT}/runs/stop", STOP_X)),
    Case(
        "UI path with dot-dot",
        b"GET /../../etc/passwd HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    ),
    # Request targets and methods.
    Case("absolute-form target", post("http://127.0.0.1:1" + STOP, STOP_X), Own400),
    # aiohttp reads every CONNECT target as an authority, no path: its router answers 404.
    Case("CONNECT", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n", 404),
    Case(
        "asterisk target",
        b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        Own400,
    ),
    # Framing: request smuggling attempts.
    Case(
        "Content-Length and Transfer-Encoding",
        post(STOP, CHUNKED_X, b"Transfer-Encoding: chunked"),
        Own400,
    ),
    Case("two Content-Lengths", post(STOP, STOP_X, b"Content-Length: 5"), Own400),
    Case(
        "two equal Content-Lengths", post(STOP, STOP_X, b"Content-Length: %d" % len(STOP_X)), Own400
    ),
    Case("chunked body", post(STOP, CHUNKED_X, b"Transfer-Encoding: chunked", length=b"")),
    Case(
        "Transfer-Encoding: chunked, identity",
        post(STOP, CHUNKED_X, b"Transfer-Encoding: chunked, identity", length=b""),
        Own400,
    ),
    Case(
        "bad chunk size",
        post(
            STOP, b"zz\r\n" + STOP_X + b"\r\n0\r\n\r\n", b"Transfer-Encoding: chunked", length=b""
        ),
        Own400,
    ),
    Case(
        # The headers and a first chunk come first, and the request is under way.
        "bad chunk size after the body began",
        post(
            STOP,
            b"5\r\n" + STOP_X[:5] + b"\r\nzz\r\n" + STOP_X[5:] + b"\r\n0\r\n\r\n",
            b"Transfer-Encoding: chunked",
            length=b"",
        ),
        Own400,
        pause_before=b"zz\r\n",
    ),
    # uvicorn ignores an expectation it does not know; aiohttp's default answered 417.
    Case("unknown expectation", post(STOP, STOP_X, b"Expect: foo")),
    # uvicorn under 0.18.40 (h11) reads 100-continue in a list and sends an interim 100
    # first; 0.22.5's (httptools) and the proxy take only the exact value. 200 `null` after it.
    Case("100-continue and another", post(STOP, STOP_X, b"Expect: 100-continue, foo"), legacy=200),
    Case("obs-fold header", post(STOP, STOP_X, b"X-Folded: a\r\n b"), Own400),
    Case(
        "obs-fold Authorization",
        post(STOP, STOP_X).replace(b"Authorization: Bearer ", b"Authorization: Bearer\r\n "),
        Own400,
    ),
    Case("bare LF line ends", post(STOP, STOP_X).replace(b"\r\n", b"\n"), Own400),
    Case("space before colon", post(STOP, STOP_X, b"Content-Length : 3"), Own400),
    Case("NUL in header", post(STOP, STOP_X, b"X-Nul: a\x00b"), Own400),
    # Header bytes that are not UTF-8 cannot be sent on unchanged (aiohttp's client writes
    # UTF-8): refused, where dropping them let a Content-Type dstack refuses pass as JSON.
    Case("UTF-8 in a header", post(STOP, STOP_X, "X-Note: café".encode())),
    Case("latin-1 byte in a header", post(STOP, STOP_X, b"X-Note: caf\xe9"), Own400),
    Case(
        "latin-1 byte in Content-Type",
        post(STOP, STOP_X).replace(b"application/json", b"application/json\xe9"),
        Own400,
    ),
    Case(
        "latin-1 byte in the path", post(STOP.replace("hostile", "hostile\udce9"), STOP_X), Own400
    ),
    Case("UTF-8 in the path", post(STOP.replace("hostile", "hostilé"), STOP_X), Own400),
    Case("malformed request line", b"POST\r\nHost: localhost\r\n\r\n", Own400),
    # uvicorn 0.54 under 0.18.40 refuses a request line without a version; aiohttp reads it.
    Case("HTTP/0.9 style", b"GET /healthcheck\r\n\r\n", legacy=200),
    # Sizes and timing.
    # Over aiohttp's header limits (8190 bytes a line, about 120 headers) the proxy refuses;
    # uvicorn has none. aiohttp answers every parse error 400, one over a limit too.
    Case("huge header (64 KB)", post(STOP, STOP_X, b"X-Huge: " + b"h" * 65536), Own400),
    Case("header under the limit (8 KB)", post(STOP, STOP_X, b"X-Big: " + b"h" * 8000)),
    Case("many headers (500)", post(STOP, STOP_X, *(b"X-H%d: v" % i for i in range(500))), Own400),
    Case("100 headers", post(STOP, STOP_X, *(b"X-H%d: v" % i for i in range(100)))),
    # A second request hidden after the announced body: with `Connection: close` the proxy
    # refuses the lot; on a kept-alive connection both answer the first request alike.
    Case("body longer than announced", post(STOP, STOP_X + SMUGGLED, length=LEN_X), Own400),
    Case(
        "body longer than announced, keep-alive",
        post(STOP, STOP_X + SMUGGLED, length=LEN_X).replace(b"close", b"keep-alive"),
    ),
    Case("body shorter than announced", post(STOP, STOP_X, length=b"100"), half_close=True),
    Case("slowloris (one byte at a time)", post(STOP, STOP_X), trickle=150),
]


@dataclass
class Observed:
    direct: RawAnswer
    proxied: RawAnswer


OBSERVED: dict[tuple[str, str], Observed] = {}


@pytest.fixture(scope="module")
def hostile_project(dstack_server: DstackServer) -> Iterator[str]:
    create_project(dstack_server, PROJECT)
    create_active_runs(dstack_server, PROJECT, [ACTIVE])
    yield PROJECT
    stop_runs_until_finished(dstack_server, PROJECT, [ACTIVE])
    _print_table(dstack_server.version)


def _print_table(version: str) -> None:
    print(f"\nhostile cases on dstack {version}: case | direct | proxied")
    for (v, name), seen in OBSERVED.items():
        if v == version:
            print(f"  {name} | {seen.direct} | {seen.proxied}")


def _chunks(case: Case, token: str) -> tuple[Chunk, ...]:
    data = case.data.replace(TOKEN, token.encode())
    slow = tuple(x for b in data[: case.trickle] for x in (bytes([b]), 0.01))
    if case.pause_before:
        first, rest = data.split(case.pause_before, 1)
        return (*slow, first[case.trickle :], 0.3, case.pause_before + rest)
    return (*slow, data[case.trickle :])


async def _good_request_works(proxy: ProxyProcess, dstack_server: DstackServer) -> None:
    answer = await exchange(
        "127.0.0.1",
        proxy.port,
        post(STOP, STOP_X).replace(TOKEN, dstack_server.admin_token.encode()),
    )
    assert (answer.status, answer.body) == (200, b"null")
    assert proxy.is_running()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_hostile_bytes_get_dstacks_answer_or_a_clear_4xx(
    dstack_server: DstackServer,
    proxy_process: ProxyProcess,
    hostile_project: str,
    case: Case,
) -> None:
    data = _chunks(case, dstack_server.admin_token)
    direct_port = urlsplit(dstack_server.url).port
    assert direct_port is not None
    direct = await exchange("127.0.0.1", direct_port, data, half_close=case.half_close)
    proxied = await exchange("127.0.0.1", proxy_process.port, data, half_close=case.half_close)
    OBSERVED[(dstack_server.version, case.name)] = Observed(direct, proxied)

    # A 5xx is only ever dstack's own, relayed as it was (dstack answers some bodies with 500).
    assert proxied.status is None or proxied.status < 500 or proxied == direct, proxied
    expect = (
        case.legacy
        if case.legacy is not None and dstack_server.version == LEGACY_VERSION
        else case.expect
    )
    if expect == Same:
        assert proxied == direct
    else:
        assert proxied.status == expect, proxied
    await _good_request_works(proxy_process, dstack_server)


async def test_slowloris_clients_hold_up_no_one_and_get_their_answer(
    dstack_server: DstackServer, proxy_process: ProxyProcess, hostile_project: str
) -> None:
    request = post(STOP, STOP_X).replace(TOKEN, dstack_server.admin_token.encode())
    direct_port = urlsplit(dstack_server.url).port
    assert direct_port is not None
    direct = await exchange("127.0.0.1", direct_port, request)
    # 100 clients send half their headers and stall for 3 s; others are served meanwhile.
    stalled = [
        asyncio.create_task(
            exchange("127.0.0.1", proxy_process.port, (request[:80], 3.0, request[80:]))
        )
        for _ in range(100)
    ]
    await asyncio.sleep(0.3)
    await _good_request_works(proxy_process, dstack_server)
    assert not any(task.done() for task in stalled)
    assert await asyncio.gather(*stalled) == [direct] * 100
    assert direct.status == 200


BATCHABLE: dict[str, tuple[str, dict[str, st.SearchStrategy[Any]]]] = {
    "runs/stop": ("runs_names", {"abort": st.booleans()}),
    "runs/delete": ("runs_names", {}),
    "volumes/delete": ("names", {}),
    "fleets/delete": ("names", {}),
    "fleets/delete_instances": ("instance_nums", {"name": st.text(max_size=8)}),
    "gateways/delete": ("names", {}),
    "secrets/delete": ("secrets_names", {}),
}
# What the shipped configuration batches (gateways/delete is off: docs/dstack-api.md).
ENABLED = {spec.name: spec for spec in Config().enabled_endpoints if spec.name in BATCHABLE}
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def batchable_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    """An endpoint and a body: mostly well-formed (so the batching path is taken), with
    odd names, values of the wrong type, missing or extra fields, or mangled bytes."""
    endpoint = draw(st.sampled_from(sorted(ENABLED)))
    list_field, others = BATCHABLE[endpoint]
    item = st.integers(-5, 2**64) if list_field == "instance_nums" else st.text(max_size=20)
    body: dict[str, object] = {list_field: draw(st.lists(item, max_size=5))}
    for name, value in others.items():
        body[name] = draw(value)
    shape = draw(st.sampled_from(("valid", "wrong type", "missing", "extra", "bytes")))
    if shape == "wrong type":
        body[draw(st.sampled_from(sorted(body)))] = draw(json_values)
    elif shape == "missing":
        del body[draw(st.sampled_from(sorted(body)))]
    elif shape == "extra":
        body[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
    raw = json.dumps(body, ensure_ascii=draw(st.booleans())).encode()
    if shape == "bytes":
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut] + draw(st.binary(max_size=6)) + raw[cut:]
    return f"/api/project/{PROJECT}/{endpoint}", raw


def companions(path: str, body: bytes) -> list[bytes]:
    """Three requests of `body`'s key (same endpoint, same shared fields) that name nothing
    that exists; if `body` is not a JSON object, plain ones for its endpoint."""
    endpoint = path.split(f"/{PROJECT}/", 1)[1]
    list_field, others = BATCHABLE[endpoint]
    try:
        fields: object = json.loads(body)
    except ValueError:
        fields = None
    shared = {  # its own value where that is of the right type, else a plain one
        name: fields[name]
        if isinstance(fields, dict) and type(fields.get(name)) is type(default)
        else default
        for name, default in (("abort", False), ("name", "ghost-fleet"))
        if name in others
    }
    ghosts: list[list[object]] = (
        [[900001], [900002], [900003]]
        if list_field == "instance_nums"
        else [["ghost-1"], ["ghost-2"], ["ghost-3"]]
    )
    return [json.dumps({list_field: g, **shared}).encode() for g in ghosts]


async def _post_both(
    server: DstackServer, proxy: ProxyProcess, path: str, body: bytes, batched_at_least: int
) -> tuple[list[tuple[int, str | None, bytes]], float]:
    """The answer straight from dstack, and through the proxy sent in a burst on its key (so
    that it is batched, not led alone), with how many requests the batch path took.

    A burst only gathers if its requests meet in the proxy: on a loaded machine a companion can
    come after its key's flight has landed and lead alone. Such a try did not test the batch
    path, so it is sent again (up to 3 tries), and every try's answer must equal dstack's."""
    token = server.admin_token
    (direct,) = await raw_burst(server.url, path, [body], token)
    for _ in range(3):
        before = await asyncio.to_thread(batched, proxy.admin_url)
        proxied = await in_a_burst(proxy.url, path, body, companions(path, body), token)
        took = await asyncio.to_thread(batched, proxy.admin_url) - before
        assert proxied == direct
        if took >= batched_at_least:
            break
    return [direct, proxied], took


async def test_after_dstacks_own_500_the_next_requests_get_dstacks_answers(
    dstack_server: DstackServer, proxy_process: ProxyProcess, hostile_project: str
) -> None:
    # uvicorn closes the connection right after the 500 of an application that raised, without
    # `Connection: close`: a request the proxy sent on it from the pool got a reset, and the
    # client a 502 that dstack never gave (46% of such requests, before the proxy stopped
    # pooling connections after a 5xx).
    token = dstack_server.admin_token.encode()
    raises = post(STOP, b'{"runs_names": ["\\ud800"], "abort": false}').replace(TOKEN, token)
    good = post(STOP, STOP_X).replace(TOKEN, token)
    direct_port = urlsplit(dstack_server.url).port
    assert direct_port is not None
    direct = await exchange("127.0.0.1", direct_port, raises)
    assert (direct.status, direct.body) == (500, b"Internal Server Error")
    for _ in range(30):
        assert await exchange("127.0.0.1", proxy_process.port, raises) == direct
        answer = await exchange("127.0.0.1", proxy_process.port, good)
        assert (answer.status, answer.body) == (200, b"null")


async def test_a_body_without_content_type_gets_dstacks_answer_in_a_burst_too(
    dstack_server: DstackServer, proxy_process: ProxyProcess, hostile_project: str
) -> None:
    # dstack 0.22.5 refuses such a body (422: FastAPI reads only a JSON-typed body as JSON),
    # 0.18.40 reads it. A batch call says JSON, so a batched one would have run on both.
    request = post(STOP, STOP_X).replace(b"Content-Type: application/json\r\n", b"")
    direct_port = urlsplit(dstack_server.url).port
    assert direct_port is not None
    token = dstack_server.admin_token
    direct = await exchange("127.0.0.1", direct_port, request.replace(TOKEN, token.encode()))
    expected = 200 if dstack_server.version == LEGACY_VERSION else 422
    assert direct.status == expected, direct
    proxied = await in_a_burst(
        proxy_process.url, STOP, STOP_X, companions(STOP, STOP_X), token, content_type=None
    )
    assert proxied == (direct.status, direct.content_type, direct.body)


@examples(ci=60, long=500)
@given(request=batchable_requests())
def test_fuzzed_batchable_bodies_get_the_same_answer_direct_and_via_the_proxy(
    dstack_server: DstackServer,
    proxy_process: ProxyProcess,
    hostile_project: str,
    request: tuple[str, bytes],
) -> None:
    path, body = request
    # The batch path must run: for the companion beside it, and for it too whenever its body fits.
    endpoint = path.split(f"/{PROJECT}/", 1)[1]
    need = 2 if parse_body(ENABLED[endpoint], body) is not None else 1
    (direct, proxied), took = asyncio.run(
        _post_both(dstack_server, proxy_process, path, body, need)
    )
    assert proxied == direct
    assert took >= need, took
