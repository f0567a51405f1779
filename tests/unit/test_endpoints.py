"""The mergeable endpoint table: which paths match, and which bodies fit exactly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.batching.endpoints import (
    DEFAULT_ENDPOINTS,
    EndpointSpec,
    ParsedBody,
    match_project,
    parse_body,
    parse_table,
    render_body,
)

SPECS = {spec.name: spec for spec in DEFAULT_ENDPOINTS}
STOP = SPECS["runs/stop"]  # runs_names: [str], abort: bool
DELETE_INSTANCES = SPECS["fleets/delete_instances"]  # instance_nums: [int], name: str


# match_project


@pytest.mark.parametrize(
    ("raw_path", "project"),
    [
        ("/api/project/main/runs/stop", "main"),
        ("/api/project/my-proj_1/runs/stop", "my-proj_1"),
        ("/api/project/Main/runs/stop", "main"),
        ("/api/project/MAIN/runs/stop", "main"),
        ("/api/project/ma%69n/runs/stop", "main"),
        ("/api/project/M%41IN/runs/stop", "main"),
        ("/api/project/a%20b/runs/stop", "a b"),
    ],
)
def test_match_project_returns_the_decoded_lower_cased_project(raw_path: str, project: str) -> None:
    assert match_project(STOP, raw_path) == project


@pytest.mark.parametrize(
    "raw_path",
    [
        pytest.param("/api/project/main/runs/stop/", id="trailing slash"),
        pytest.param("/api/project//main/runs/stop", id="double slash before project"),
        pytest.param("/api/project/main//runs/stop", id="double slash after project"),
        pytest.param("//api/project/main/runs/stop", id="leading double slash"),
        pytest.param("/api/project/a%2Fb/runs/stop", id="encoded slash"),
        pytest.param("/api/project/a%2fb/runs/stop", id="encoded slash lower case"),
        pytest.param("/api/project/a/b/runs/stop", id="two segments"),
        pytest.param("/api/project/./runs/stop", id="dot segment"),
        pytest.param("/api/project/../runs/stop", id="dot-dot segment"),
        pytest.param("/api/project/%2e%2e/runs/stop", id="encoded dot-dot segment"),
        pytest.param("/api/project/%2E/runs/stop", id="encoded dot segment"),
        pytest.param("/api/project//runs/stop", id="empty segment"),
        pytest.param("/api/project/runs/stop", id="no segment"),
        pytest.param("/api/project/%ff/runs/stop", id="invalid utf-8 escape"),
        # SQLite folds ASCII only, Postgres all Unicode: "café" vs "CAFÉ" is not one project
        # everywhere, and the Kelvin sign K lower-cases to an ASCII k in Python.
        pytest.param("/api/project/caf%C3%A9/runs/stop", id="non-ASCII project"),
        pytest.param("/api/project/%E2%84%AA/runs/stop", id="Kelvin sign"),
        pytest.param("/api/project/%C3/runs/stop", id="truncated utf-8 escape"),
        pytest.param("/api/project/a\\b/runs/stop", id="backslash"),
        pytest.param("/api/project/main/runs/delete", id="other endpoint"),
        pytest.param("/api/project/main/runs/stopped", id="longer suffix"),
        pytest.param("/api/projects/main/runs/stop", id="other prefix"),
        pytest.param("/API/project/main/runs/stop", id="prefix in other case"),
        pytest.param("/api/project/main/runs/stop?x=1", id="query string"),
        pytest.param("/api/project/main/runs/list", id="other path"),
    ],
)
def test_match_project_refuses_anything_but_exactly_the_spec_path(raw_path: str) -> None:
    assert match_project(STOP, raw_path) is None


# parse_body


@pytest.mark.parametrize(
    ("spec", "body", "parsed"),
    [
        (
            STOP,
            b'{"runs_names": ["a", "b"], "abort": false}',
            ParsedBody(("a", "b"), (("abort", False),)),
        ),
        (STOP, b'{"abort": true, "runs_names": ["a"]}', ParsedBody(("a",), (("abort", True),))),
        (SPECS["runs/delete"], b'{"runs_names": ["a", "a"]}', ParsedBody(("a", "a"), ())),
        (
            DELETE_INSTANCES,
            b'{"name": "f", "instance_nums": [0, 3]}',
            ParsedBody((0, 3), (("name", "f"),)),
        ),
        (
            DELETE_INSTANCES,
            b'{"name": "f", "instance_nums": [9223372036854775807]}',
            ParsedBody((2**63 - 1,), (("name", "f"),)),
        ),
    ],
    ids=["stop", "fields in any order", "no equal fields", "int items", "largest i64"],
)
def test_parse_body_accepts_exactly_the_spec_fields_and_types(
    spec: EndpointSpec, body: bytes, parsed: ParsedBody
) -> None:
    result = parse_body(spec, body)
    assert result == parsed
    assert result is not None
    assert [type(v) for v in result.names] == [type(v) for v in parsed.names]


@pytest.mark.parametrize(
    ("spec", "body"),
    [
        pytest.param(STOP, b'{"runs_names": ["a"], "abort": false, "x": 1}', id="extra field"),
        pytest.param(STOP, b'{"runs_names": ["a"]}', id="missing equal field"),
        pytest.param(STOP, b'{"abort": false}', id="missing list field"),
        pytest.param(STOP, b'{"runs_names": ["a", 1], "abort": false}', id="int in str list"),
        pytest.param(STOP, b'{"runs_names": [null], "abort": false}', id="null in str list"),
        pytest.param(STOP, b'{"runs_names": [["a"]], "abort": false}', id="nested list"),
        pytest.param(STOP, b'{"runs_names": "a", "abort": false}', id="str not list"),
        pytest.param(STOP, b'{"runs_names": null, "abort": false}', id="null list"),
        pytest.param(STOP, b'{"runs_names": [], "abort": false}', id="empty list"),
        pytest.param(STOP, b'{"runs_names": ["a"], "abort": "yes"}', id="bool as str"),
        pytest.param(STOP, b'{"runs_names": ["a"], "abort": 1}', id="bool as int"),
        pytest.param(STOP, b'{"runs_names": ["a"], "abort": null}', id="bool as null"),
        pytest.param(
            DELETE_INSTANCES, b'{"name": "f", "instance_nums": [true]}', id="bool in int list"
        ),
        pytest.param(DELETE_INSTANCES, b'{"name": "f", "instance_nums": ["1"]}', id="int as str"),
        pytest.param(DELETE_INSTANCES, b'{"name": "f", "instance_nums": [1.0]}', id="int as float"),
        pytest.param(DELETE_INSTANCES, b'{"name": 1, "instance_nums": [1]}', id="str as int"),
        pytest.param(
            DELETE_INSTANCES,
            b'{"name": "f", "instance_nums": [18446744073709551616]}',
            id="int beyond 64 bits",
        ),
        pytest.param(
            DELETE_INSTANCES,
            b'{"name": "f", "instance_nums": [1' + b"0" * 400 + b"]}",
            id="huge int",
        ),
        pytest.param(STOP, b'["a"]', id="json array"),
        pytest.param(STOP, b'"a"', id="json string"),
        pytest.param(STOP, b"null", id="json null"),
        pytest.param(STOP, b"", id="empty body"),
        pytest.param(STOP, b'{"runs_names": ["a"], "abort": false', id="malformed json"),
        pytest.param(STOP, b'{"runs_names": ["a"], "abort": NaN}', id="NaN"),
        pytest.param(STOP, b'{"runs_names": ["a"], "abort": false} x', id="trailing garbage"),
        pytest.param(STOP, b'{"runs_names": ["\xff"], "abort": false}', id="invalid utf-8"),
    ],
)
def test_parse_body_refuses_anything_that_does_not_fit_exactly(
    spec: EndpointSpec, body: bytes
) -> None:
    assert parse_body(spec, body) is None


# render_body


def test_render_body_writes_the_list_field_then_the_shared_fields() -> None:
    assert render_body(STOP, ["a", "b"], (("abort", True),)) == (
        b'{"runs_names":["a","b"],"abort":true}'
    )
    assert render_body(DELETE_INSTANCES, [1, 2], (("name", "f"),)) == (
        b'{"instance_nums":[1,2],"name":"f"}'
    )


@given(names=st.lists(st.text(), min_size=1), abort=st.booleans())
def test_parse_body_reads_back_whatever_render_body_wrote(names: list[str], abort: bool) -> None:
    equal = (("abort", abort),)
    assert parse_body(STOP, render_body(STOP, names, equal)) == ParsedBody(tuple(names), equal)


# EndpointSpec


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("projects/remove_members", "/api/projects/{project}/remove_members"),
        ("leave", "/api/projects/{project}/remove_members"),
        ("projects/remove_members", "/api/projects/{project}/members/delete"),
    ],
)
def test_endpoint_spec_refuses_remove_members(name: str, path: str) -> None:
    with pytest.raises(ValueError, match="remove_members"):
        EndpointSpec(name, path, "usernames", "str")


@pytest.mark.parametrize(
    "path",
    ["/api/project/runs/stop", "api/project/{project}/runs/stop", "/a/{project}/b/{project}"],
)
def test_endpoint_spec_needs_a_rooted_path_with_one_project_segment(path: str) -> None:
    with pytest.raises(ValueError, match="path"):
        EndpointSpec("x", path, "names", "str")


def test_every_default_endpoint_matches_its_own_path() -> None:
    for spec in DEFAULT_ENDPOINTS:
        assert match_project(spec, spec.path.replace("{project}", "main")) == "main"


def test_the_probe_is_on_by_default_and_can_be_switched_off_per_endpoint() -> None:
    entry = {"name": "x", "path": "/api/project/{project}/x", "list_field": "names"}
    on, off = parse_table([entry, {**entry, "name": "y", "probe": False}])
    assert (on.probe, off.probe) == (True, False)
    assert all(spec.probe for spec in DEFAULT_ENDPOINTS)  # an empty list is a no-op on each
    with pytest.raises(ValueError, match="true or false"):
        parse_table([{**entry, "probe": "false"}])
