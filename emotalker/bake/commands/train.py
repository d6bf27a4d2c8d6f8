"""`emotalker train <stage>`: one nested subparser a training stage.

Each stage adds itself with its own `add_<stage>_parser(stages)` so that
stages developed apart merge without touching each other.
"""

from __future__ import annotations


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="train a stage of an avatar from a dataset")
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    add_a2e_parser(stages)


def add_a2e_parser(stages) -> None:
    p = stages.add_parser("a2e", help="train the audio-to-expression model (audio + emotion -> FLAME expression, jaw, neck)")
    p.add_argument("dataset", help="dataset folder (emotalker-dataset/1)")
    p.add_argument("--avatar", required=True, help="avatar bundle folder to write a2e.safetensors into (created if absent)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 2000)")
    p.add_argument("--batch", type=int, default=None, help="windows a step (default 16)")
    p.add_argument("--window", type=int, default=None, help="frames a training window (default 64)")
    p.add_argument("--d-model", type=int, default=None, help="transformer width (default 128)")
    p.add_argument("--layers", type=int, default=None, help="transformer layers (default 2)")
    p.add_argument("--features", choices=("logmel", "speech"), default="logmel",
                   help="audio features: log-mel (default) or wav2vec2/HuBERT from --speech-model")
    p.add_argument("--speech-model", default=None, help="local wav2vec2/HuBERT folder (save_pretrained layout) for --features speech")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    p.add_argument("--resume", action="store_true", help="continue from the bundle's a2e checkpoint")
    p.set_defaults(func=run_a2e)


def run_a2e(args) -> None:
    import json
    from dataclasses import replace

    from emotalker.core.train_a2e import TrainA2EConfig, train_a2e

    cfg = TrainA2EConfig()
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    if args.batch is not None:
        cfg = replace(cfg, batch=args.batch)
    if args.window is not None:
        cfg = replace(cfg, window=args.window)
    model = {k: v for k, v in (("d_model", args.d_model), ("n_layers", args.layers)) if v is not None}
    if model:
        cfg = replace(cfg, model=model)
    if args.features == "speech":
        if not args.speech_model:
            from emotalker.core.errors import InputError

            raise InputError(None, "--features speech needs --speech-model FOLDER")
        cfg = replace(cfg, features={"kind": "speech", "model_dir": args.speech_model})
    metrics = train_a2e(args.dataset, args.avatar, cfg, device=args.device, progress=args.progress, resume=args.resume)
    if args.progress == "json":
        print(json.dumps({"stage": "train a2e", "done": True, "metrics": metrics}))
    else:
        print(f"wrote {args.avatar}/a2e.safetensors: lip vertex error {metrics['lip_vertex_err_mm']:.3f} mm "
              f"(training-mean baseline {metrics['baseline_lip_vertex_err_mm']:.3f} mm), "
              f"jaw correlation {metrics['jaw_corr']:.3f} on {metrics['split']} clips, {metrics['train_minutes']:.1f} min")
