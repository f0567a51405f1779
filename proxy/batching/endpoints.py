"""The table of batchable dstack endpoints, and the strict test of whether one request fits it.

Pure data and pure functions: no aiohttp, no I/O. A request that does not fit exactly is passed
through untouched, so dstack answers it as it always did.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import unquote

import orjson

FieldType: TypeAlias = Literal["str", "int", "bool"]
Names: TypeAlias = tuple[str, ...] | tuple[int, ...]
"""The item names one caller's request carries, as sent."""
SharedFields: TypeAlias = tuple[tuple[str, object], ...]
"""The body fields besides the list, which every member of a batch shares (`equal_fields`)."""

_PROJECT_SEGMENT: Final = "{project}"
# Percent-escapes are fine; anything that could make dstack route elsewhere than we matched
# (an encoded slash, a dot segment, backslash, empty segment) is not: a proxy and a server that
# normalise a path differently would disagree on which project it names.
_SEGMENT_RE: Final = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%-]+")


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """One batchable endpoint: where it lives and what its body must look like."""

    name: str
    path: str
    list_field: str
    item_type: FieldType
    equal_fields: tuple[tuple[str, FieldType], ...] = ()
    # Statuses that on this endpoint only the key's own checks give (token, project, role), on
    # every server version: shared at once, without a probe.
    key_wide_statuses: frozenset[int] = frozenset({401, 403, 404})
    enabled: bool = True
    # The same request with an empty list is a no-op on dstack that still meets every check of
    # the key (version, token, project, role): the probe that tells a refusal about the key from
    # one about some names (docs/dstack-api.md, Refusals of the batchable endpoints).
    probe: bool = True
    idempotent: bool = True  # false: an unknown item fails the call, so a repeat fails too
    # The path around its project segment, split once: every POST is matched against them.
    prefix: str = field(init=False, repr=False, compare=False)
    suffix: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.path.count(_PROJECT_SEGMENT) != 1 or not self.path.startswith("/"):
            raise ValueError(f"path must start with / and contain {_PROJECT_SEGMENT} once")
        if self.item_type not in ("str", "int"):
            raise ValueError("item_type must be str or int")
        if any(t not in ("str", "int", "bool") for _, t in self.equal_fields):
            raise ValueError("equal_fields types must be str, int or bool")
        if self.name.endswith("remove_members") or self.path.endswith("/remove_members"):
            # A one-name list there means "leave the project" (docs/dstack-api.md, Endpoints
            # that take lists).
            raise ValueError("remove_members must never be batched")
        prefix, suffix = self.path.split(_PROJECT_SEGMENT)
        object.__setattr__(self, "prefix", prefix)
        object.__setattr__(self, "suffix", suffix)


@dataclass(frozen=True, slots=True)
class ParsedBody:
    """A body that fits its endpoint exactly."""

    names: Names
    shared_fields: SharedFields


DEFAULT_ENDPOINTS: Final = (
    EndpointSpec(
        "runs/stop", "/api/project/{project}/runs/stop", "runs_names", "str", (("abort", "bool"),)
    ),
    EndpointSpec("runs/delete", "/api/project/{project}/runs/delete", "runs_names", "str"),
    EndpointSpec("volumes/delete", "/api/project/{project}/volumes/delete", "names", "str"),
    # An SSH fleet earns a bare 403 of its own when non-admins may not manage SSH fleets, so 403
    # is not key-wide here: the probe tells it from a role too low.
    EndpointSpec(
        "fleets/delete",
        "/api/project/{project}/fleets/delete",
        "names",
        "str",
        key_wide_statuses=frozenset({401, 404}),
    ),
    EndpointSpec(
        "fleets/delete_instances",
        "/api/project/{project}/fleets/delete_instances",
        "instance_nums",
        "int",
        (("name", "str"),),
        key_wide_statuses=frozenset({401, 404}),
    ),
    # Off: 0.18.x terminates each gateway in the cloud inside the call, so a merged call that
    # fails on a later gateway has already removed earlier ones (docs/dstack-api.md, Failure
    # semantics); and no dstack UI deletes gateways one request per item.
    EndpointSpec(
        "gateways/delete",
        "/api/project/{project}/gateways/delete",
        "names",
        "str",
        enabled=False,
    ),
    # Unknown secrets fail the call (400): deleting one twice is not harmless.
    EndpointSpec(
        "secrets/delete",
        "/api/project/{project}/secrets/delete",
        "secrets_names",
        "str",
        idempotent=False,
    ),
    EndpointSpec(
        "repos/delete", "/api/project/{project}/repos/delete", "repos_ids", "str", enabled=False
    ),
    EndpointSpec(
        "backends/delete",
        "/api/project/{project}/backends/delete",
        "backends_names",
        "str",
        enabled=False,
    ),
)


def parse_table(v: Any) -> tuple[EndpointSpec, ...]:
    """The endpoint table from configuration data (a list of mappings); ValueError if bad."""
    if not isinstance(v, list):
        raise ValueError("expected a list of endpoint entries")
    specs = tuple(_endpoint(e) for e in v)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError("endpoint names must be unique")
    return specs


def _flag(v: Any) -> bool:
    # A quoted "false" must never switch an endpoint on, as bool("false") would.
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, not {v!r}")
    return v


def _endpoint(e: Any) -> EndpointSpec:
    if not isinstance(e, dict):
        raise ValueError("expected each endpoint to be a mapping")
    known = {f.name for f in dataclasses.fields(EndpointSpec) if f.init}
    if unknown := set(e) - known:
        raise ValueError(f"unknown endpoint keys {sorted(unknown)}")
    try:
        return EndpointSpec(
            name=str(e["name"]),
            path=str(e["path"]),
            list_field=str(e["list_field"]),
            item_type=e.get("item_type", "str"),
            equal_fields=tuple((str(k), t) for k, t in (e.get("equal_fields") or {}).items()),
            key_wide_statuses=frozenset(
                int(s) for s in e.get("key_wide_statuses", (401, 403, 404))
            ),
            enabled=_flag(e.get("enabled", True)),
            idempotent=_flag(e.get("idempotent", True)),
            probe=_flag(e.get("probe", True)),
        )
    except KeyError as missing:
        raise ValueError(f"endpoint entry misses {missing}") from None
    except (TypeError, AttributeError):
        raise ValueError(f"endpoint entry {e.get('name')!r} is malformed") from None


def match_project(spec: EndpointSpec, raw_path: str) -> str | None:
    """The project named by `raw_path` if it is exactly `spec`'s path, normalised as dstack
    matches projects (percent-decoded, case-insensitive); otherwise None."""
    prefix, suffix = spec.prefix, spec.suffix
    if not (raw_path.startswith(prefix) and raw_path.endswith(suffix)):
        return None
    segment = raw_path[len(prefix) : len(raw_path) - len(suffix)]
    if not _SEGMENT_RE.fullmatch(segment):
        return None
    try:
        project = unquote(segment, errors="strict")
    except UnicodeDecodeError:
        return None
    if not project or "/" in project or project in (".", "..") or not project.isascii():
        # dstack folds case in SQL: SQLite's lower() folds ASCII only, Postgres' all of
        # Unicode. Only ASCII names mean the same project on both.
        return None
    return project.lower()


def parse_body(spec: EndpointSpec, body: bytes) -> ParsedBody | None:
    """The caller's names and shared fields if `body` has exactly `spec`'s fields and JSON types,
    with a non-empty list; None when in any doubt (dstack then answers the request itself)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    equal_types = dict(spec.equal_fields)
    if not isinstance(data, dict) or data.keys() != {spec.list_field, *equal_types}:
        return None
    names = data[spec.list_field]
    if not isinstance(names, list) or not names:
        return None
    if not all(_has_type(v, spec.item_type) for v in names):
        return None
    if not all(_has_type(data[f], t) for f, t in spec.equal_fields):
        return None
    return ParsedBody(tuple(names), tuple((f, data[f]) for f, _ in spec.equal_fields))


def render_body(spec: EndpointSpec, names: Sequence[str | int], shared: SharedFields) -> bytes:
    """The JSON body of a call naming `names`."""
    return orjson.dumps({spec.list_field: names, **dict(shared)})


def _has_type(value: object, kind: FieldType) -> bool:
    # bool is a subclass of int: a JSON `true` is not an instance number.
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str if kind == "str" else bool)
