"""The intake's decisions without a socket: prechecks on the request line and headers, the key,
rendering, and what `handle` does with a request (batch it, or pass it through, and why)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any
from unittest import mock

import orjson
import pytest
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.batching.batcher import Batcher, ClosedBatch
from proxy.batching.batches import (
    BatchKey,
    BatchTarget,
    Member,
    UpstreamReply,
    batch_key,
    fingerprint,
)
from proxy.batching.endpoints import DEFAULT_ENDPOINTS, ParsedBody
from proxy.batching.policy import Policy
from proxy.config import Config
from proxy.errors import UpstreamTimeout
from proxy.intake.fit import BypassReason, precheck
from proxy.intake.limits import Limits
from proxy.intake.route import Intake, render
from proxy.ops.metrics import Metrics
from proxy.state import FOLLOW_UP_WITHIN, FollowUps, State

SPECS = {spec.name: spec for spec in DEFAULT_ENDPOINTS}
STOP = "/api/project/main/runs/stop"
TOKEN = ("Authorization", "Bearer t")
JSON = ("Content-Type", "application/json")
SECRET = b"s" * 32
Headers = Sequence[tuple[str, str]]


def request(
    headers: Headers,
    path: str = STOP,
    body: bytes | None = None,
    method: str = "POST",
    *,
    length: bool = True,
    complete: bool = True,
) -> web.Request:
    """A request without a socket; `body` is all there already, and ends unless not `complete`."""
    transport = mock.Mock(is_closing=mock.Mock(return_value=False))
    transport.get_extra_info.return_value = None
    if body is None:
        return make_mocked_request(method, path, headers, transport=transport)
    payload = StreamReader(mock.Mock(), 2**16, loop=asyncio.get_running_loop())
    payload.feed_data(body)
    if complete:
        payload.feed_eof()
    framing = ("Content-Length", str(len(body))) if length else ("Transfer-Encoding", "chunked")
    return make_mocked_request(
        method, path, [*headers, framing], transport=transport, payload=payload
    )


@pytest.mark.parametrize(
    ("headers", "path", "reason"),
    [
        # No Content-Type: dstack 0.22.5 refuses the body (422), a batch call would run it.
        ([TOKEN], STOP, "content_type"),
        ([TOKEN, JSON], STOP, None),
        ([TOKEN, ("Content-Type", "application/json; charset=utf-8")], STOP, None),
        ([TOKEN, ("Content-Type", "Application/JSON; Charset=UTF-8")], STOP, None),
        ([TOKEN, ("Content-Type", "application/json; charset=latin-1")], STOP, "content_type"),
        ([TOKEN, ("Content-Type", "text/plain")], STOP, "content_type"),
        ([TOKEN, JSON], STOP + "?x=1", "query"),
        ([TOKEN, JSON], STOP + "?", "query"),
        ([TOKEN, JSON, ("Content-Encoding", "gzip")], STOP, "content_encoding"),
        ([JSON], STOP, "credentials"),
        ([TOKEN, JSON, TOKEN], STOP, "credentials"),
        ([TOKEN, JSON, ("Cookie", "a=1")], STOP, None),
        ([TOKEN, JSON, ("Cookie", "a=1"), ("Cookie", "b=2")], STOP, "credentials"),
        ([TOKEN, JSON, ("X-API-Version", "0.22.5")], STOP, None),
        ([TOKEN, JSON, ("X-API-Version", "1"), ("X-API-Version", "2")], STOP, "headers"),
        ([TOKEN, JSON, ("Connection", "keep-alive")], STOP, None),
        ([TOKEN, JSON, ("Connection", "close")], STOP, None),
        ([TOKEN, JSON, ("Connection", "keep-alive, Authorization")], STOP, "headers"),
        ([TOKEN, JSON, ("Content-Length", "100")], STOP, None),
        ([TOKEN, JSON, ("Content-Length", "101")], STOP, "too_large"),
    ],
)
def test_precheck_reads_only_the_request_line_and_headers(
    headers: Headers, path: str, reason: str | None
) -> None:
    assert precheck(request(headers, path), max_body_bytes=100) == reason


def test_bypass_reasons_keep_the_metric_label_values() -> None:
    assert sorted(BypassReason) == sorted(
        [
            "closed",
            "query",
            "content_type",
            "content_encoding",
            "credentials",
            "headers",
            "too_large",
            "slow_body",
            "body",
            "pending_limit",
            "key_limit",
            "bytes_limit",
            "alone",
        ]
    )


def key(headers: Headers, abort: bool = False, secret: bytes = SECRET) -> BatchKey:
    parsed = ParsedBody(("a",), (("abort", abort),))
    given = CIMultiDictProxy(CIMultiDict(headers))
    return batch_key(SPECS["runs/stop"], "main", parsed, given, secret)


def test_equal_credentials_headers_and_fields_make_equal_keys() -> None:
    one = key([TOKEN, ("X-API-Version", "0.22.5")])
    other = key([("authorization", "Bearer t"), ("x-api-version", "0.22.5")])
    assert one == other
    assert hash(one) == hash(other)
    assert one.read_headers == (("x-api-version", "0.22.5"),)
    assert one.shared_fields == (("abort", False),)


@pytest.mark.parametrize(
    "headers",
    [
        [("Authorization", "Bearer u")],
        [TOKEN, ("Cookie", "session=1")],
        [TOKEN, ("X-API-Version", "")],  # empty is a 400 at dstack; absent skips the check
        [TOKEN, ("X-API-Version", "0.22.5")],
    ],
)
def test_anything_that_can_change_the_answer_changes_the_key(headers: Headers) -> None:
    assert key(headers) != key([TOKEN])


def test_body_fields_that_must_be_equal_change_the_key() -> None:
    assert key([TOKEN], abort=True) != key([TOKEN], abort=False)


def test_the_principal_is_a_keyed_fingerprint_never_the_credential() -> None:
    secret_token = [("Authorization", "Bearer sk-0123456789")]
    assert "sk-0123456789" not in repr(key(secret_token))
    principal = key(secret_token).principal
    assert principal != key(secret_token, secret=b"x" * 32).principal  # no use without it
    assert int(principal, 16) >= 0 and len(principal) == 64  # SHA-256, as hex


def test_a_credential_moved_between_headers_is_another_principal() -> None:
    token = CIMultiDictProxy(CIMultiDict([("Authorization", "x")]))
    cookie = CIMultiDictProxy(CIMultiDict([("Cookie", "x")]))
    assert fingerprint(token, SECRET) != fingerprint(cookie, SECRET)


def test_render_drops_what_described_the_batch_call_and_keeps_the_answer() -> None:
    headers = CIMultiDict(
        [
            ("Content-Type", "application/json"),
            ("Content-Length", "999"),
            ("Content-Encoding", "gzip"),
            ("Set-Cookie", "a=1"),
            ("X-Other", "kept"),
        ]
    )
    response = render(UpstreamReply(400, CIMultiDictProxy(headers), b'{"detail": []}'))
    assert (response.status, response.body) == (400, b'{"detail": []}')
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["X-Other"] == "kept"
    for dropped in ("Content-Encoding", "Set-Cookie"):
        assert dropped not in response.headers
    assert response.headers.get("Content-Length") in (None, str(len(b'{"detail": []}')))


@dataclasses.dataclass
class Rig:
    """An intake with a real batcher whose flush records its batches and answers 200."""

    intake: Intake
    state: State
    metrics: Metrics
    batches: list[ClosedBatch[BatchKey, Member, BatchTarget]]
    passed: list[bytes]  # the prefix of each request passed through

    def bypasses(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "dstack_coalescer_batch_bypass_total", {"reason": reason}
        )
        return value or 0.0


def rig(
    mode: str = "on",
    raises: BaseException | None = None,
    limits: Mapping[str, int] = {},
    max_body_bytes: int = 1000,
    policy: Policy = Config.policy,
) -> Rig:
    config = Config(
        upstream="http://upstream", mode=mode, max_body_bytes=max_body_bytes, policy=policy
    )
    batches: list[ClosedBatch[BatchKey, Member, BatchTarget]] = []
    passed: list[bytes] = []
    ok = UpstreamReply(200, CIMultiDictProxy(CIMultiDict()), b"null")

    async def flush(
        batch: ClosedBatch[BatchKey, Member, BatchTarget],
        resolve: Callable[[Member, UpstreamReply | BaseException], None],
    ) -> None:
        batches.append(batch)
        for member in batch.members:
            resolve(member, raises or ok)

    async def passthrough(request: web.Request, *, prefix: bytes = b"") -> web.StreamResponse:
        passed.append(prefix)
        return web.Response(status=299)

    batcher: Batcher[BatchKey, Member, UpstreamReply, BatchTarget] = Batcher(
        flush, window=0, max_size=100, max_wait=0, expire=lambda batch: TimeoutError()
    )
    caps = {"max_pending": 10, "max_per_key": 10, "max_bytes": 1 << 20, **limits}
    metrics, state = Metrics(), State()
    intake = Intake(config, batcher, Limits(**caps), metrics, passthrough, state)
    return Rig(intake, state, metrics, batches, passed)


async def handle(
    r: Rig, body: Any, headers: Headers = (TOKEN, JSON), path: str = STOP, **shape: bool
) -> int:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    req = request(headers, path, raw, **shape)
    match = r.intake.match(req)
    assert match is not None
    return (await r.intake.handle(req, *match)).status


def test_only_posts_to_enabled_batchable_paths_match() -> None:
    intake = rig().intake
    spec, project = intake.match(request([TOKEN], "/api/project/M%41in/runs/stop")) or (None, "")
    assert (spec, project) == (SPECS["runs/stop"], "main")
    assert intake.match(request([TOKEN], STOP, method="GET")) is None
    assert intake.match(request([TOKEN], "/api/project/main/repos/delete")) is None  # disabled
    assert intake.match(request([TOKEN], "/api/project/main/runs/list")) is None
    assert rig(mode="off").intake.match(request([TOKEN], STOP)) is None


async def test_a_fitting_request_is_batched_with_its_key_names_and_target() -> None:
    r = rig()
    assert await handle(r, {"runs_names": ["a", "b"], "abort": True}) == 200
    (batch,) = r.batches
    assert batch.members == [Member(("a", "b"), 0)]
    assert (batch.key.endpoint, batch.key.project) == ("runs/stop", "main")
    assert batch.key.shared_fields == (("abort", True),)
    assert batch.context.spec == SPECS["runs/stop"]
    assert str(batch.context.url) == "http://upstream" + STOP
    assert batch.context.headers["Authorization"] == "Bearer t"
    assert batch.context.headers["Content-Type"] == "application/json"
    assert r.passed == []


async def test_where_repeats_fail_every_caller_is_a_member_of_its_own() -> None:
    r = rig()
    path = "/api/project/main/secrets/delete"
    await asyncio.gather(*(handle(r, {"secrets_names": ["s"]}, path=path) for _ in range(2)))
    (batch,) = r.batches
    assert [m.names for m in batch.members] == [("s",), ("s",)]
    assert len({m.serial for m in batch.members}) == 2


@pytest.mark.parametrize(
    ("body", "length", "reason", "read"),
    [
        ({"runs_names": ["a"]}, True, "body", True),  # abort missing
        ({"runs_names": [], "abort": False}, True, "body", True),
        (b'{"runs_names": ["a"], "abort": false', True, "body", True),
        ({"runs_names": ["a"], "abort": False, "x": 1}, False, "body", True),
        ({"runs_names": ["a" * 200], "abort": False}, True, "too_large", False),  # by its length
        ({"runs_names": ["a" * 200], "abort": False}, False, "too_large", True),  # by reading
    ],
)
async def test_a_body_that_does_not_fit_goes_through_with_what_was_read(
    body: Any, length: bool, reason: str, read: bool
) -> None:
    r = rig(max_body_bytes=100)
    assert await handle(r, body, length=length) == 299
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    assert r.passed == [raw if read else b""] and r.batches == []
    assert r.bypasses(reason) == 1


async def test_a_slow_body_goes_through_with_what_arrived(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("proxy.intake.fit.BODY_READ_TIMEOUT", 0.01)
    r = rig()
    assert await handle(r, b'{"runs_names": ', complete=False) == 299
    assert r.passed == [b'{"runs_names": ']
    assert r.bypasses("slow_body") == 1


async def test_draining_passes_through_without_reading_the_body() -> None:
    r = rig()
    r.state.draining = True
    assert await handle(r, {"runs_names": ["a"], "abort": False}) == 299
    assert r.passed == [b""] and r.batches == []
    assert r.bypasses("closed") == 1


async def test_at_a_cap_the_request_goes_through_singly() -> None:
    r = rig(limits={"max_per_key": 1})
    body = {"runs_names": ["a"], "abort": False}
    assert sorted(await asyncio.gather(handle(r, body), handle(r, body))) == [200, 299]
    assert r.passed == [orjson.dumps(body)]
    assert r.bypasses("key_limit") == 1


async def test_after_aclose_requests_go_through() -> None:
    r = rig()
    await r.intake.aclose(asyncio.get_running_loop().time() + 1)
    assert await handle(r, {"runs_names": ["a"], "abort": False}) == 299
    assert r.bypasses("closed") == 1


async def test_an_upstream_error_becomes_the_callers_error_response() -> None:
    r = rig(raises=UpstreamTimeout("too slow"))
    req = request([TOKEN, JSON], STOP, orjson.dumps({"runs_names": ["a"], "abort": False}))
    response = await r.intake.handle(req, SPECS["runs/stop"], "main")
    assert isinstance(response, web.Response) and response.body is not None
    assert response.status == 504
    assert orjson.loads(bytes(response.body)) == {  # type: ignore[arg-type]
        "detail": [{"msg": "too slow", "code": "upstream_timeout"}]
    }


@pytest.mark.parametrize(
    ("policy", "would_form"), [(Config.policy, 2), (Policy.WINDOW, 1)], ids=["default", "window"]
)
async def test_shadow_mode_passes_through_and_counts_what_the_configured_policy_would_form(
    policy: Policy, would_form: int
) -> None:
    # Two stops at once: the shipped policy would send the first alone and the second behind
    # it, `window` both in one call after its window. Shadow mode counts what the proxy's own
    # policy would do (it once counted every policy as `window`).
    r = rig(mode="shadow", policy=policy)
    body = {"runs_names": ["a"], "abort": False}
    assert await asyncio.gather(handle(r, body), handle(r, body)) == [299, 299]
    await r.intake.aclose(asyncio.get_running_loop().time() + 1)
    assert r.batches == []  # nothing was sent as a batch
    observed = r.metrics.registry.get_sample_value(
        "dstack_coalescer_shadow_batches_total", {"endpoint": "runs/stop"}
    )
    assert observed == would_form


async def test_a_follow_up_is_a_request_on_a_connection_just_answered() -> None:
    # A browser with more requests than connections sends a queued one on a connection the
    # moment its answer is in: that request is a follow-up (docs/design.md, Flush policy).
    follow_ups = FollowUps()
    browser, other = SimpleNamespace(protocol=object()), SimpleNamespace(protocol=object())
    assert follow_ups.follows(browser) is None  # type: ignore[arg-type]  # its first request
    follow_ups.answered(browser)  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    follow_ups.arrived(browser)  # type: ignore[arg-type]  # learns the client's delay
    delay = follow_ups.follows(browser)  # type: ignore[arg-type]
    assert delay is not None and 0.01 <= delay < FOLLOW_UP_WITHIN
    assert follow_ups.follows(other) is None  # type: ignore[arg-type]  # a connection of its own
    await asyncio.sleep(FOLLOW_UP_WITHIN)
    assert follow_ups.follows(browser) is None  # type: ignore[arg-type]  # a new click, later
    follow_ups.answered(other)  # type: ignore[arg-type]
    assert list(follow_ups._answered) == [id(other.protocol)]  # the stale entry is forgotten
