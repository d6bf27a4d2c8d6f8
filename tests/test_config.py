"""Typed configs (core/base/config.py) and the options generated from them (cli/options.py)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Literal, get_args, get_origin

import pytest

from emotalker.cli.options import (LazyOptionsParser, add_config_options, config_from_args, config_leaves,
                                   option_groups)
from emotalker.core.base.config import field_docs, from_dict, to_dict
from emotalker.core.base.errors import InputError


@dataclass(frozen=True)
class Inner:
    size: int = 4
    """How big."""
    kind: Literal["a", "b"] = "a"
    """Which one."""


@dataclass(frozen=True)
class Outer:
    steps: int = 10
    """Steps to run.
    Over two lines."""
    rate: float = 0.5
    """A rate."""
    name: str | None = None
    """An optional name."""
    flag: bool = True
    """A switch."""
    colour: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Not an option: a tuple."""
    inner: Inner = field(default_factory=Inner)
    """The nested part."""
    seed: int = 0
    """The outer seed."""


@dataclass(frozen=True)
class WithSeed:
    seed: int = 0
    """Inner seed."""


@dataclass(frozen=True)
class Clashing:
    seed: int = 0
    """Outer seed."""
    inner: WithSeed = field(default_factory=WithSeed)
    """Nested."""


# ---------------------------------------------------------------------------- core/base/config.py


def test_field_docs_reads_the_string_after_each_field():
    docs = field_docs(Outer)
    assert docs["steps"] == "Steps to run. Over two lines."  # whitespace collapsed
    assert docs["inner"] == "The nested part." and docs["seed"] == "The outer seed."
    assert field_docs(Inner) == {"size": "How big.", "kind": "Which one."}


def test_from_dict_builds_nested_configs_and_converts_losslessly():
    cfg = from_dict(Outer, {"steps": 3, "rate": 1, "colour": [0, 0.5, 1], "inner": {"kind": "b"}})
    assert cfg == Outer(steps=3, rate=1.0, colour=(0.0, 0.5, 1.0), inner=Inner(kind="b"))
    assert isinstance(cfg.rate, float) and isinstance(cfg.colour, tuple)
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize("data, says", [
    ({"inner": {"size": "big"}}, "inner.size must be an integer"),
    ({"inner": {"kind": "c"}}, "inner.kind must be one of 'a', 'b'"),
    ({"inner": {"colour": 1}}, "unknown field inner.colour"),
    ({"steps": True}, "steps must be an integer"),
    ({"rate": "fast"}, "rate must be a number"),
    ({"flag": 1}, "flag must be true or false"),
    ({"colour": [1, 2]}, "colour must have 3 items"),
    ({"inner": 3}, "inner must be an object"),
])
def test_from_dict_errors_name_the_field_and_the_source(data, says):
    with pytest.raises(InputError) as err:
        from_dict(Outer, data, "request.json")
    assert says in str(err.value) and "request.json" in str(err.value)


def test_from_dict_names_a_missing_required_field():
    @dataclass
    class Needs:
        count: int
        """Required."""

    with pytest.raises(InputError, match="missing field count"):
        from_dict(Needs, {})


# ---------------------------------------------------------------------------- cli/options.py


def parse(cls, argv, **options):
    parser = argparse.ArgumentParser()
    add_config_options(parser, cls, **options)
    return config_from_args(cls, parser.parse_args(argv), **options), parser


def test_options_come_from_the_fields_nested_ones_included():
    cfg, parser = parse(Outer, [])
    assert cfg == Outer()
    help_ = parser.format_help()
    for text in ("--steps", "Steps to run. Over two lines. (default: 10)", "--size", "How big.", "--kind {a,b}",
                 "--no-flag", "--name"):
        assert text in help_, text
    assert "--colour" not in help_ and "--inner " not in help_


def test_options_round_trip_to_the_config():
    cfg, _ = parse(Outer, ["--steps", "3", "--rate", "2.5", "--name", "x", "--no-flag", "--size", "9", "--kind", "b"])
    assert cfg == Outer(steps=3, rate=2.5, name="x", flag=False, inner=Inner(size=9, kind="b"))


def test_names_skip_prefix_and_command_defaults():
    names = {"inner.size": ("width", "w"), "steps": "count"}
    cfg, parser = parse(Outer, ["--count", "4", "--w", "2", "--x-rate", "0.25"], names=names, prefix="x-",
                        skip={"inner.kind"})
    assert cfg == Outer(steps=4, rate=0.25, inner=Inner(size=2))
    assert "--kind" not in parser.format_help() and "--x-kind" not in parser.format_help()
    parser = argparse.ArgumentParser()
    add_config_options(parser, Outer, defaults={"steps": 99})
    assert "(default: 99)" in parser.format_help() and parser.parse_args([]).steps == 99


def test_a_clash_is_an_error_unless_both_fields_share_the_option_by_name():
    with pytest.raises(ValueError, match="--seed would set seed, inner.seed"):
        option_groups(Clashing)
    cfg, parser = parse(Clashing, ["--seed", "5"], names={"seed": "seed", "inner.seed": "seed"})
    assert cfg.seed == 5 and cfg.inner.seed == 5
    assert "Outer seed. Inner seed." in parser.format_help()  # a shared option says what it sets


def test_the_lazy_parser_adds_its_options_only_when_used():
    calls = []

    def populate(p):
        calls.append(p)
        p.add_argument("--late", type=int, default=1)

    top = argparse.ArgumentParser()
    sub = top.add_subparsers(dest="cmd", parser_class=LazyOptionsParser)
    sub.add_parser("go", populate=populate)
    sub.add_parser("stay")
    top.format_help()
    assert calls == []
    assert top.parse_args(["go", "--late", "3"]).late == 3 and len(calls) == 1
    assert top.parse_args(["go"]).late == 1 and len(calls) == 1  # populated once


def test_emotalker_help_does_not_import_torch():
    code = "import sys; from emotalker.cli.main import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------------------- the training configs


def training_configs():
    from emotalker.core.training.pipeline import TrainAllConfig

    return TrainAllConfig


def walk(cls, seen=None):
    """Every dataclass reachable from `cls` through its fields."""
    from emotalker.core.base.config import field_types

    seen = seen if seen is not None else []
    if cls not in seen:
        seen.append(cls)
        for tp in field_types(cls).values():
            if dataclasses.is_dataclass(tp):
                walk(tp, seen)
    return seen


def test_every_training_config_field_has_a_docstring():
    classes = walk(training_configs())
    names = {c.__name__ for c in classes}
    assert {"TrainAllConfig", "TrainNeutralConfig", "BlendshapeConfig", "TrainA2EConfig", "A2EConfig",
            "FeatureConfig", "TrainEmotionConfig", "EmotionConfig"} <= names
    for cls in classes:
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__}: no docstring for {missing}"


def test_the_training_config_round_trips_through_json():
    from emotalker.core.models.a2e import A2EConfig
    from emotalker.core.training.a2e import TrainA2EConfig

    cls = training_configs()
    cfg = cls(a2e=TrainA2EConfig(steps=5, model=A2EConfig(d_model=16)))
    assert from_dict(cls, to_dict(cfg)) == cfg
    with pytest.raises(InputError, match="a2e.model.d_model must be an integer"):
        from_dict(cls, {"a2e": {"model": {"d_model": "wide"}}})


def test_the_three_entry_points_share_one_signature():
    from emotalker.core.training.a2e import train_a2e
    from emotalker.core.training.emotion import train_emotion
    from emotalker.core.training.neutral import train_neutral

    expected = ["dataset", "avatar_dir", "config", "device", "progress", "resume", "progress_sink"]
    for fn in (train_neutral, train_a2e, train_emotion):
        assert list(inspect.signature(fn).parameters) == expected, fn.__name__


# ---------------------------------------------------------------------------- `emotalker train` options


def train_args(argv):
    from emotalker.cli.main import build_parser
    from emotalker.cli.train import stage_options

    args = build_parser().parse_args(["train", *argv])
    cls, options = stage_options(args.stage)
    return config_from_args(cls, args, **options), args


def other_value(leaf):
    """A value of the leaf's type unlike its default, and how it is written on the command line."""
    tp = leaf.type
    if get_origin(tp) is Literal:
        value = next(c for c in get_args(tp) if c != leaf.default)
    elif tp is bool:
        return (not leaf.default), None
    elif tp is int:
        value = (leaf.default or 0) + 3
    elif tp is float:
        value = (leaf.default or 0.0) + 0.125
    else:
        value = "elsewhere"
    return value, str(value)


def get_path(cfg, path):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("stage", ["neutral", "a2e", "emotion", "all"])
def test_every_train_option_sets_its_field_and_nothing_else(stage):
    from emotalker.cli.train import stage_options

    cls, options = stage_options(stage)
    out = "--out" if stage in ("neutral", "all") else "--avatar"
    default, _ = train_args([stage, "ds", out, "av"])
    assert default == cls()  # the command's defaults are the dataclass's
    for opts, leaves in option_groups(cls, **options).items():
        value, text = other_value(leaves[0])
        flag = f"--{opts[0]}" if text is not None else f"--{'' if value else 'no-'}{opts[0]}"
        cfg, _ = train_args([stage, "ds", out, "av", flag, *([text] if text is not None else [])])
        expected = default
        for leaf in leaves:
            expected = replace_path(expected, leaf.path, value)
        assert cfg == expected, opts


def replace_path(cfg, path, value):
    head, _, rest = path.partition(".")
    return dataclasses.replace(cfg, **{head: replace_path(getattr(cfg, head), rest, value) if rest else value})


def test_the_existing_train_option_names_still_work():
    cfg, _ = train_args(["neutral", "ds", "--out", "av", "--steps", "7", "--gaussians", "500", "--max-gaussians", "900",
                         "--sh-degree", "2", "--delta-every", "3", "--eval-frames", "0", "--seed", "4",
                         "--checkpoint-every", "50", "--resolution", "64"])
    assert (cfg.steps, cfg.model.n_gaussians, cfg.max_gaussians, cfg.model.sh_degree) == (7, 500, 900, 2)
    assert (cfg.delta_every, cfg.eval_frames, cfg.seed, cfg.model.seed) == (3, 0, 4, 4)
    assert (cfg.checkpoint_every, cfg.resolution) == (50, 64)
    assert train_args(["neutral", "ds", "--out", "av"])[0].delta_every == 0  # 4 on CPU, 1 on CUDA

    cfg, args = train_args(["a2e", "ds", "--avatar", "av", "--steps", "9", "--batch", "2", "--window", "16",
                            "--d-model", "48", "--layers", "3", "--features", "speech", "--speech-model", "w2v"])
    assert (cfg.steps, cfg.batch, cfg.window, cfg.model.d_model, cfg.model.n_layers) == (9, 2, 16, 48, 3)
    assert (cfg.features.kind, cfg.features.model_dir, args.out) == ("speech", "w2v", "av")

    cfg, _ = train_args(["emotion", "ds", "--avatar", "av", "--steps", "3", "--resolution", "32", "--no-null-token",
                         "--tune-neutral", "0.5", "--text-checkpoint", "clip.pt", "--text-model", "RN50",
                         "--vgg-weights", "vgg.pth", "--eval-stride", "4", "--seed", "2"])
    assert (cfg.steps, cfg.resolution, cfg.model.use_null, cfg.neutral_lr_scale) == (3, 32, False, 0.5)
    assert (cfg.text_checkpoint, cfg.text_model, cfg.vgg_weights, cfg.eval_stride, cfg.seed) == (
        "clip.pt", "RN50", "vgg.pth", 4, 2)

    cfg, _ = train_args(["all", "ds", "--out", "av", "--neutral-steps", "5", "--gaussians", "100", "--a2e-steps", "6",
                         "--emotion-steps", "7", "--eval-stride", "8", "--no-null-token", "--tune-neutral", "0.25",
                         "--seed", "3", "--resolution", "48"])
    assert (cfg.neutral.steps, cfg.neutral.model.n_gaussians, cfg.a2e.steps, cfg.emotion.steps) == (5, 100, 6, 7)
    assert (cfg.emotion.eval_stride, cfg.emotion.model.use_null, cfg.emotion.neutral_lr_scale) == (8, False, 0.25)
    assert cfg.neutral.seed == cfg.neutral.model.seed == cfg.a2e.seed == cfg.emotion.seed == 3
    assert cfg.neutral.resolution == cfg.emotion.resolution == 48


@pytest.mark.parametrize("stage", ["neutral", "a2e", "emotion", "all"])
def test_train_help_lists_every_field(stage, capsys):
    from emotalker.cli.main import main
    from emotalker.cli.train import stage_options

    with pytest.raises(SystemExit) as done:
        main(["train", stage, "--help"])
    assert done.value.code == 0
    help_ = capsys.readouterr().out
    cls, options = stage_options(stage)
    leaves = config_leaves(cls, options["skip"])
    assert leaves and all(f"--{opts[0]}" in help_ for opts in option_groups(cls, **options))
