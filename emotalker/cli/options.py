"""Command-line options generated from config dataclasses (emotalker/core/base/config.py).

Defaults and help live once, on the dataclass; a command adds a config's
fields as `--field-name` options and reads them back into that config:

    add_config_options(parser, TrainA2EConfig, names={"model.n_layers": "layers"})
    cfg = config_from_args(TrainA2EConfig, args, names={"model.n_layers": "layers"})

Fields with a scalar type (bool, int, float, str, a Literal, or those `| None`)
become options; nested configs are walked into, their fields named by their own
name (`model.d_model` -> `--d-model`); lists and dicts are left to the caller.
A field is addressed by its dotted path, in `skip`, `names` and `defaults`.
A field without a default is a required option; a bool field is `--x/--no-x`,
except one named `no_x`, a switch that only turns something off: `--no-x`.

`names` gives a path its option name(s) instead (the first is the option, the
rest aliases), used as written (no `prefix`). Two fields may share one option
only when both are listed in `names`: then one value sets both (a run's seed
and its model's). Any other clash is a programming error (ValueError).

`LazyOptionsParser` adds a subcommand's options only when that subcommand is used.
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


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One scalar field of a (nested) config: its dotted path, option type, docstring and default."""

    path: str
    type: Any
    doc: str
    default: Any
    required: bool = False
    """The dataclass gives no default (and no parent instance does)."""

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]


def config_leaves(cls: type, skip: set[str] = frozenset(), base: Any = None, path: str = "") -> list[Leaf]:
    """Every scalar field of `cls` not in `skip`, nested configs walked into; defaults from `base`
    (an instance, for nested configs the parent's default) or else the dataclass."""
    types_, docs = field_types(cls), field_docs(cls)
    leaves = []
    for f in dataclasses.fields(cls):
        where = path + f.name
        if not f.init or where in skip:
            continue
        default = getattr(base, f.name) if base is not None else _field_default(f)
        if dataclasses.is_dataclass(types_[f.name]):
            leaves += config_leaves(types_[f.name], skip, default, where + ".")
        elif _scalar(types_[f.name]):
            required = base is None and f.default is f.default_factory is dataclasses.MISSING
            leaves.append(Leaf(where, _scalar(types_[f.name]), docs.get(f.name, ""), default, required))
    return leaves


def option_names(leaf: Leaf, prefix: str = "", names: dict | None = None) -> tuple[str, ...]:
    """The option strings of a field without their `--`: its entry in `names`, else prefix + name."""
    given = (names or {}).get(leaf.path)
    if given is None:
        return ((prefix + leaf.name).replace("_", "-"),)
    return (given,) if isinstance(given, str) else tuple(given)


def dest_name(option: str) -> str:
    return option.replace("-", "_")


def option_groups(cls: type, skip: set[str] = frozenset(), prefix: str = "",
                  names: dict | None = None) -> dict[tuple[str, ...], list[Leaf]]:
    """{option strings: the fields that option sets}, checked: shared options are named in
    `names` and agree on type and default."""
    groups: dict[tuple[str, ...], list[Leaf]] = {}
    for leaf in config_leaves(cls, skip):
        groups.setdefault(option_names(leaf, prefix, names), []).append(leaf)
    for opts, leaves in groups.items():
        if len(leaves) > 1:
            paths = [leaf.path for leaf in leaves]
            if not all(p in (names or {}) for p in paths):
                raise ValueError(f"option --{opts[0]} would set {', '.join(paths)}: name them in `names` to share it")
            if len({(leaf.type, repr(leaf.default)) for leaf in leaves}) > 1:
                raise ValueError(f"option --{opts[0]} shares fields of different types or defaults: {', '.join(paths)}")
    return groups


def add_config_options(parser: argparse.ArgumentParser, cls: type, skip: set[str] = frozenset(),
                       prefix: str = "", defaults: dict | None = None, names: dict | None = None) -> None:
    """Add one option a scalar field of `cls` (minus `skip`), its help the field's docstring.

    `defaults` overrides a field's default for this command only (shown in the help)."""
    for opts, leaves in option_groups(cls, skip, prefix, names).items():
        leaf = leaves[0]
        default = (defaults or {}).get(leaf.path, leaf.default)
        strings = ["--" + o for o in opts]
        doc = " ".join(dict.fromkeys(x.doc for x in leaves if x.doc))  # a shared option says what it all sets
        doc = doc.replace("%", "%%")  # argparse formats help with %
        kw: dict[str, Any] = {"dest": dest_name(opts[0]), "default": default, "help": doc}
        shown = f" (default: {default})" if default is not None and leaf.type is not bool else ""
        if leaf.type is bool and leaf.name.startswith("no_") and not default:
            parser.add_argument(*strings, action="store_true", **kw)
        elif leaf.type is bool:
            parser.add_argument(*strings, action=argparse.BooleanOptionalAction, **kw)
        elif get_origin(leaf.type) is Literal:
            choices = get_args(leaf.type)
            parser.add_argument(*strings, choices=choices, type=type(choices[0]), **{**kw, "help": doc + shown})
        else:
            required = leaf.required and leaf.path not in (defaults or {})
            parser.add_argument(*strings, type=leaf.type, metavar=dest_name(opts[0]).upper(), required=required,
                                **{**kw, "help": doc + shown})


def config_values(cls: type, args: argparse.Namespace, skip: set[str] = frozenset(), prefix: str = "",
                  names: dict | None = None) -> dict[str, Any]:
    """{dotted path: value} of the options `add_config_options` added, read back from parsed `args`."""
    return {leaf.path: getattr(args, dest_name(opts[0]))
            for opts, leaves in option_groups(cls, skip, prefix, names).items() for leaf in leaves}


def build_config(cls: type, values: dict[str, Any], base: Any = None, path: str = ""):
    """`cls` with the fields in `values` ({dotted path: value}) set, nested configs built from
    their defaults (the parent's, through `base`) and their own entries."""
    types_ = field_types(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        where = path + f.name
        if where in values:
            kwargs[f.name] = values[where]
        elif dataclasses.is_dataclass(types_[f.name]) and any(k.startswith(where + ".") for k in values):
            nested_base = getattr(base, f.name) if base is not None else _field_default(f)
            kwargs[f.name] = build_config(types_[f.name], values, nested_base, where + ".")
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def config_from_args(cls: type, args: argparse.Namespace, skip: set[str] = frozenset(), prefix: str = "",
                     names: dict | None = None, **fixed: Any):
    """`cls` built from the parsed options plus `fixed` fields (nested configs, positional arguments)."""
    return build_config(cls, {**config_values(cls, args, skip, prefix, names), **fixed})


class LazyOptionsParser(argparse.ArgumentParser):
    """A subcommand's parser that calls `populate(self)` only when that subcommand is used (parsed
    or its help shown): config classes import torch, which `emotalker --help` should not wait for.

    Use as `add_subparsers(parser_class=LazyOptionsParser)`, then `add_parser(name, populate=fn)`."""

    def __init__(self, *args, populate=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._populate = populate

    def _ready(self) -> None:
        if self._populate is not None:
            populate, self._populate = self._populate, None
            populate(self)

    def parse_known_args(self, args=None, namespace=None):
        self._ready()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._ready()
        return super().format_help()
