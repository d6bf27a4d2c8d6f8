"""Command-line options generated from config dataclasses (emotalker/core/base/config.py).

Defaults and help live once, on the dataclass; a command adds a config's
fields as `--field-name` options and reads them back into that config:

    add_config_options(parser, TrainA2EConfig, skip={"model"})
    cfg = config_from_args(TrainA2EConfig, args)

Only fields with a scalar type (bool, int, float, str, a Literal, or those
`| None`) become options; nested configs and lists are left to the caller.
A field without a default is a required option; a bool field is `--x/--no-x`,
except one named `no_x`, a switch that only turns something off: `--no-x`.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Literal, get_args, get_origin

from emotalker.core.base.config import field_docs, field_types, optional_inner

SCALARS = (bool, int, float, str)


def _scalar(tp: Any) -> Any | None:
    """The option type of a field (a scalar or a Literal), or None when it cannot be an option."""
    tp = optional_inner(tp) or tp
    if tp in SCALARS or get_origin(tp) is Literal:
        return tp
    return None


def option_name(field: str, prefix: str = "") -> str:
    return "--" + (prefix + field).replace("_", "-")


def dest_name(field: str, prefix: str = "") -> str:
    return (prefix + field).replace("-", "_")


def config_fields(cls: type, skip: set[str] = frozenset()) -> list[dataclasses.Field]:
    types_ = field_types(cls)
    return [f for f in dataclasses.fields(cls) if f.init and f.name not in skip and _scalar(types_[f.name])]


def add_config_options(parser: argparse.ArgumentParser, cls: type, skip: set[str] = frozenset(),
                       prefix: str = "", defaults: dict | None = None) -> None:
    """Add one option a scalar field of `cls` (minus `skip`), its help the field's docstring.

    `defaults` overrides a field's default for this command only (shown in the help)."""
    docs, types_ = field_docs(cls), field_types(cls)
    defaults = defaults or {}
    for f in config_fields(cls, skip):
        tp = _scalar(types_[f.name])
        required = (f.name not in defaults and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING)
        default = defaults.get(f.name, f.default if f.default is not dataclasses.MISSING else None)
        help_ = docs.get(f.name, "")
        shown = f" (default: {default})" if default is not None and tp is not bool else ""
        name = option_name(f.name, prefix)
        if tp is bool and f.name.startswith("no_") and not default:
            parser.add_argument(name, dest=dest_name(f.name, prefix), action="store_true", help=help_)
        elif tp is bool:
            parser.add_argument(name, dest=dest_name(f.name, prefix), action=argparse.BooleanOptionalAction,
                                default=default, help=help_)
        elif get_origin(tp) is Literal:
            choices = get_args(tp)
            parser.add_argument(name, dest=dest_name(f.name, prefix), choices=choices, type=type(choices[0]),
                                default=default, help=help_ + shown)
        else:
            parser.add_argument(name, dest=dest_name(f.name, prefix), type=tp, default=default, required=required,
                                metavar=f.name.upper(), help=help_ + shown)


def config_values(cls: type, args: argparse.Namespace, skip: set[str] = frozenset(), prefix: str = "") -> dict:
    """{field: value} of the options `add_config_options` added, read back from parsed `args`."""
    return {f.name: getattr(args, dest_name(f.name, prefix)) for f in config_fields(cls, skip)}


def config_from_args(cls: type, args: argparse.Namespace, skip: set[str] = frozenset(), prefix: str = "",
                     **fixed: Any):
    """`cls` built from the parsed options plus `fixed` fields (nested configs, positional arguments)."""
    return cls(**config_values(cls, args, skip, prefix), **fixed)
