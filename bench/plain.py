"""Typed results back from the plain data they were saved as (JSON)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def from_plain(kind: type[T], raw: Any) -> T:
    """`raw` (JSON's lists, dicts, strings and numbers) as `kind`: dataclasses field by field
    (keys the dataclass does not have are dropped, so older runs still read), lists, tuples,
    dicts (JSON's string keys back to ints where the type says so), optionals."""
    return typing.cast(T, _convert(kind, raw))


def _convert(kind: Any, raw: Any) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if raw is None:
        return None
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        hints = typing.get_type_hints(kind)
        fields = {f.name for f in dataclasses.fields(kind) if f.init}
        return kind(**{k: _convert(hints[k], v) for k, v in raw.items() if k in fields})
    if origin in (types.UnionType, typing.Union):
        return _convert(next(a for a in args if a is not type(None)), raw)
    if origin is list:
        return [_convert(args[0], v) for v in raw]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in raw)
        return tuple(_convert(a, v) for a, v in zip(args, raw, strict=True))
    if origin is dict:
        return {_convert(args[0], k): _convert(args[1], v) for k, v in raw.items()}
    if kind is int:
        return int(raw)
    if kind is float:
        return float(raw)
    return raw  # str, bool, Literal values
