"""Typed configuration dataclasses: each field documented once, checked once.

A config is a (possibly nested) dataclass whose fields each carry a docstring,
the string literal on the line after the field, as in

    @dataclass
    class TrainA2EConfig:
        steps: int = 2000
        \"\"\"Training steps.\"\"\"

`field_docs` reads those strings from the source, so the command line's help
(emotalker/cli/options.py) quotes the code itself;
`from_dict` builds a config from JSON-like data (a worker request, a file),
rejecting unknown fields and wrong types with one error naming the field
(`check_fields` checks partial data, such as a manifest's defaults, the same way).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from emotalker.core.base.errors import InputError

T = TypeVar("T")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field name: its docstring, whitespace collapsed} for a dataclass, base classes included."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source (frozen app): help falls back to names
            continue
        body = tree.body[0].body
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def field_types(cls: type) -> dict[str, Any]:
    """{field name: resolved type} (annotations are strings under `from __future__ import annotations`)."""
    return typing.get_type_hints(cls)


def optional_inner(tp: Any) -> Any | None:
    """X for `X | None` / Optional[X]; None for any other type."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0]
    return None


def _check(value: Any, tp: Any, where: str, source: Any) -> Any:
    """`value` converted to `tp` where that is lossless (int -> float, list -> tuple), else InputError."""
    inner = optional_inner(tp)
    if inner is not None:
        return None if value is None else _check(value, inner, where, source)
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InputError(source, f"{where} must be an object, got {type(value).__name__}")
        return from_dict(tp, value, source, where + ".")
    if origin is Literal:
        if value not in get_args(tp):
            raise InputError(source, f"{where} must be one of {', '.join(map(repr, get_args(tp)))}, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(source, f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(source, f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(source, f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InputError(source, f"{where} must be a string, got {type(value).__name__}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise InputError(source, f"{where} must be a list, got {type(value).__name__}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise InputError(source, f"{where} must have {len(args)} items, got {len(value)}")
            return tuple(_check(v, a, f"{where}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_check(v, item, f"{where}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(source, f"{where} must be an object, got {type(value).__name__}")
        return value
    raise TypeError(f"config field {where}: unsupported type {tp!r}")  # a programming error, not input


def from_dict(cls: type[T], data: dict, source: Any = None, prefix: str = "") -> T:
    """`cls(**data)` with every field type-checked and nested configs built; unknown or missing
    fields are an InputError naming the field and `source` (a file, or a request)."""
    values = check_fields(cls, data, source, prefix)
    for f in dataclasses.fields(cls):
        if (f.init and f.name not in values and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING):
            raise InputError(source, f"missing field {prefix}{f.name}")
    return cls(**values)


def check_fields(cls: type, data: dict, source: Any = None, prefix: str = "") -> dict[str, Any]:
    """The fields `data` gives, each type-checked as a field of `cls` (converted where lossless);
    an unknown field is an InputError. Missing fields are not: for partial data such as defaults."""
    if not isinstance(data, dict):
        raise InputError(source, f"{prefix.rstrip('.') or cls.__name__} must be an object, got {type(data).__name__}")
    types_ = field_types(cls)
    known = sorted(f.name for f in dataclasses.fields(cls) if f.init)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InputError(source, f"unknown field {prefix}{unknown[0]} (known: {', '.join(known)})")
    return {name: _check(value, types_[name], prefix + name, source) for name, value in data.items()}


def to_dict(config: Any) -> dict:
    """The JSON-ready form of a config (tuples become lists); `from_dict` reads it back."""
    return json_ready(dataclasses.asdict(config))


def json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value
