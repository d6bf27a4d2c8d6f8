"""`emotalker train <stage>`: parses a stage's options and calls its entry point in core/training.

Every option but the dataset, the avatar folder, --device, --progress and --resume is
generated from the stage's config dataclass (emotalker/cli/options.py), so defaults
and help are the fields' own. OPTIONS names where a CLI name differs from its field's.
"""

from __future__ import annotations

import json
import sys

from emotalker.cli.options import LazyOptionsParser, add_config_options, config_from_args, config_leaves
from emotalker.cli.report import write_avatar_report
from emotalker.core.base.errors import EmoTalkerError

# Per stage: the fields that are not options (training sets them from the rig, Stage 1 or
# the features) and {field path: CLI name} where the name is not the field's.
OPTIONS = {
    "neutral": {
        "skip": frozenset(),
        # One --seed seeds the run and the model's initial sampling.
        "names": {"model.n_gaussians": "gaussians", "model.seed": "seed", "seed": "seed"},
    },
    "a2e": {
        "skip": frozenset({"model.n_expr", "model.feat_dim", "model.features", "features.sample_rate"}),
        "names": {"model.n_layers": "layers", "features.kind": "features", "features.model_dir": "speech-model"},
    },
    "emotion": {
        "skip": frozenset({"model.n_gaussians", "model.audio_dim", "model.features", "model.d_text"}),
        "names": {"model.n_layers": "layers", "model.use_null": "null-token", "neutral_lr_scale": "tune-neutral"},
    },
}
# `train all` prefixes each stage's options with its name (--a2e-steps), but for the seed and
# the resolution, which every stage shares, and these older unprefixed aliases.
ALL_ALIASES = {"neutral.model.n_gaussians": "gaussians", "emotion.model.use_null": "null-token",
               "emotion.neutral_lr_scale": "tune-neutral", "emotion.text_checkpoint": "text-checkpoint",
               "emotion.text_model": "text-model", "emotion.vgg_weights": "vgg-weights",
               "emotion.eval_stride": "eval-stride"}
ALL_SHARED = ("seed", "resolution")
HELP = {
    "neutral": "Stage 1: fit FLAME-bound Gaussian blendshapes (the neutral state space)",
    "a2e": "train the audio-to-expression model (audio + emotion -> FLAME expression, jaw, neck)",
    "emotion": "Stage 2: the spatial-audio-emotion attention (Gaussian offsets over Stage 1)",
    "all": "train the three stages in turn: neutral, a2e, emotion",
}


def config_class(stage: str) -> type:
    """TrainAllConfig for `all`, else the class of its field `stage` (imported here: it imports torch)."""
    from emotalker.core.base.config import field_types
    from emotalker.core.training.pipeline import TrainAllConfig

    return TrainAllConfig if stage == "all" else field_types(TrainAllConfig)[stage]


def all_options() -> dict:
    """`add_config_options` arguments of TrainAllConfig: each stage's fields under `<stage>.`, named as above."""
    skip, names = set(), {}
    for stage, spec in OPTIONS.items():
        # One --minutes budgets the whole run; the stages' own are for `train <stage>`.
        skip |= {f"{stage}.{p}" for p in spec["skip"]} | {f"{stage}.minutes"}
        for leaf in config_leaves(config_class(stage), spec["skip"]):
            own = spec["names"].get(leaf.path, leaf.name.replace("_", "-"))
            path = f"{stage}.{leaf.path}"
            names[path] = own if own in ALL_SHARED else (f"{stage}-{own}",) + ((ALL_ALIASES[path],) if path in ALL_ALIASES else ())
    return {"skip": frozenset(skip), "names": names}


def stage_options(stage: str) -> tuple[type, dict]:
    """The config class and `add_config_options` arguments of a stage, or of `all`."""
    return config_class(stage), all_options() if stage == "all" else dict(OPTIONS[stage])


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="train a stage of an avatar from a dataset")
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True, parser_class=LazyOptionsParser)
    for stage in (*OPTIONS, "all"):
        stages.add_parser(stage, help=HELP[stage], populate=lambda p, stage=stage: add_stage_options(p, stage))


def add_stage_options(p, stage: str) -> None:
    p.add_argument("dataset", help="dataset folder (emotalker-dataset/1)")
    if stage in ("a2e", "emotion"):
        p.add_argument("--avatar", dest="out", metavar="AVATAR", required=True, help="avatar folder to train into"
                       + (" (created when missing)" if stage == "a2e" else "; it must hold Stage 1"))
    else:
        p.add_argument("--out", required=True, help="avatar folder to write (created when missing)")
    cls, options = stage_options(stage)
    add_config_options(p, cls, **options)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar", help="tqdm bar, JSON lines or nothing")
    p.add_argument("--resume", action="store_true", help="continue from the avatar's checkpoint"
                   + (" (each stage from its own)" if stage == "all" else ""))
    p.set_defaults(func=run_train)


def run_train(args) -> None:
    from emotalker.core.training.pipeline import TrainAllConfig, stages_to_train, train_all

    cls, options = stage_options(args.stage)
    config = config_from_args(cls, args, **options)
    config, stages = stages_to_train(args.stage, config if args.stage == "all" else TrainAllConfig(**{args.stage: config}))
    train_all(args.dataset, args.out, config, device=args.device, progress=args.progress, resume=args.resume,
              stages=stages, on_plan=lambda plan: show_plan(plan, args),
              on_stage=lambda stage, metrics: report(stage, metrics, args))
    if args.stage == "all":
        try:
            write_avatar_report(args.out, args.dataset, device=args.device, progress=args.progress)
        except (EmoTalkerError, OSError) as exc:  # the avatar is whole: a report that fails does not undo it
            print(f"the avatar is trained, but its report failed ({exc}); `emotalker report {args.out}` "
                  f"writes it again", file=sys.stderr)


def show_plan(plan, args) -> None:
    """The plan before the first step: a JSON line with --progress json, else a table for a person."""
    if args.progress == "json":
        print(json.dumps({"stage": "plan", **plan.to_dict()}), flush=True)
    else:
        print("\n".join(plan.lines()), flush=True)


def report(stage: str, metrics: dict, args) -> None:
    """One line a finished stage: a JSON object with --progress json, else a summary."""
    from emotalker.core.training.pipeline import stage_summary

    if args.progress == "json":
        fields = {"avatar": args.out, **metrics} if stage == "neutral" else {"metrics": metrics}
        print(json.dumps({"stage": f"train {stage}", "done": True, **fields}))
    else:
        print(f"wrote {args.out}: {stage_summary(stage, metrics)}")
