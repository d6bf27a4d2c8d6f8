"""`emotalker train <stage>`: one nested subparser a training stage.

Each stage adds itself with its own `add_<stage>_parser(stages)` so that
stages developed apart merge without touching each other.
"""

from __future__ import annotations


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="train a stage of an avatar from a dataset")
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    add_neutral_parser(stages)
    add_a2e_parser(stages)
    add_emotion_parser(stages)
    add_all_parser(stages)


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

    from emotalker.core.training.a2e import TrainA2EConfig, train_a2e

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
            from emotalker.core.base.errors import InputError

            raise InputError(None, "--features speech needs --speech-model FOLDER")
        cfg = replace(cfg, features={"kind": "speech", "model_dir": args.speech_model})
    metrics = train_a2e(args.dataset, args.avatar, cfg, device=args.device, progress=args.progress, resume=args.resume)
    if args.progress == "json":
        print(json.dumps({"stage": "train a2e", "done": True, "metrics": metrics}))
    else:
        print(f"wrote {args.avatar}/a2e.safetensors: lip vertex error {metrics['lip_vertex_err_mm']:.3f} mm "
              f"(training-mean baseline {metrics['baseline_lip_vertex_err_mm']:.3f} mm), "
              f"jaw correlation {metrics['jaw_corr']:.3f} on {metrics['split']} clips, {metrics['train_minutes']:.1f} min")


# ---------------------------------------------------------------------------- Stage 1


def add_neutral_parser(stages) -> None:
    p = stages.add_parser("neutral", help="Stage 1: fit FLAME-bound Gaussian blendshapes (the neutral state space)")
    p.add_argument("dataset", help="dataset folder (dataset.json, flame_model.npz, clips/)")
    p.add_argument("--out", required=True, help="avatar folder to write (created when missing)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--resolution", type=int, default=None, help="train at this size of the longer image side (default: the dataset's)")
    p.add_argument("--steps", type=int, default=30000, help="training steps, one frame each (default: 30000)")
    p.add_argument("--gaussians", type=int, default=10000, help="face Gaussians sampled on the mesh at the start (default: 10000)")
    p.add_argument("--max-gaussians", type=int, default=30000, help="cap on densification, teeth included (default: 30000)")
    p.add_argument("--sh-degree", type=int, default=1, choices=range(0, 4), help="highest SH degree (default: 1)")
    p.add_argument("--delta-every", type=int, default=0,
                   help="train the blendshape deltas every n-th step (default: 4 on CPU, 1 on CUDA)")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (default: 500)")
    p.add_argument("--eval-frames", type=int, default=40, help="test frames evaluated at the end (default: 40; 0 skips)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in OUT/checkpoints/")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar", help="tqdm bar, JSON lines or nothing")
    p.set_defaults(func=run_train_neutral)


def run_train_neutral(args) -> None:
    import json
    from pathlib import Path

    import numpy as np

    from emotalker.core.models.blendshapes import BlendshapeConfig
    from emotalker.core.models.bundle import AvatarBundle
    from emotalker.core.datasets.dataset import Dataset
    from emotalker.core.base.device import resolve_device
    from emotalker.core.base.errors import InputError
    from emotalker.core.evaluation.neutral import evaluate
    from emotalker.core.datasets.frames import FrameSet
    from emotalker.core.base.progress import Progress
    from emotalker.core.training.neutral import NeutralTrainer, TrainNeutralConfig, new_model

    if args.steps < 1:
        raise InputError(None, "--steps must be at least 1")
    device = resolve_device(args.device)
    ds = Dataset.open(args.dataset)
    flame = ds.flame_model()
    train_ids = [c.id for c in ds.split("train")]
    if not train_ids:
        raise InputError(Path(args.dataset) / "dataset.json", "no clips in the train split")
    frames = FrameSet(ds, train_ids, args.resolution, device=device)
    cfg = TrainNeutralConfig(steps=args.steps, resolution=args.resolution, max_gaussians=args.max_gaussians,
                             checkpoint_every=args.checkpoint_every, seed=args.seed,
                             delta_every=args.delta_every or (1 if device.type == "cuda" else 4))
    bundle = AvatarBundle.create(args.out)
    ckpt = bundle.root / "checkpoints" / "neutral.ckpt.safetensors"
    if args.resume and ckpt.is_file():
        trainer = NeutralTrainer.from_checkpoint(ckpt, flame, frames, cfg, device)
        if args.progress != "json":
            print(f"resuming from step {trainer.state.step} ({ckpt})")
    else:
        if args.resume and args.progress != "json":
            print(f"no checkpoint at {ckpt}; starting a new run")
        if args.gaussians + 2 * BlendshapeConfig().n_teeth > args.max_gaussians:
            raise InputError(None, f"--gaussians {args.gaussians} plus the teeth exceeds --max-gaussians {args.max_gaussians}")
        model = new_model(flame, args.gaussians, sh_degree=args.sh_degree, seed=args.seed)
        trainer = NeutralTrainer(model, frames, cfg, device)
    with Progress("train neutral", args.steps, mode=args.progress, initial=trainer.state.step) as progress:
        state = trainer.run(checkpoint=ckpt, progress=progress)

    model = trainer.model
    flame.save(bundle.flame_path)
    model.save(bundle.stage_path("neutral"), dataset=str(Path(args.dataset).resolve().name), steps=state.step)
    recent = state.history[-10:]
    metrics = {"train_loss": float(np.mean([h["loss"] for h in recent])) if recent else None,
               "train_psnr": float(np.mean([h["psnr"] for h in recent])) if recent else None}
    test_ids = [c.id for c in ds.split("test")]
    if args.eval_frames > 0 and test_ids:
        test = FrameSet(ds, test_ids, args.resolution, device=device)
        idx = np.unique(np.linspace(0, len(test) - 1, min(args.eval_frames, len(test))).round().astype(int))
        metrics.update({f"test_{k}": v for k, v in evaluate(model, test, idx.tolist()).items()})
    bundle.update_manifest(fps=ds.fps)
    bundle.update_manifest("neutral", dataset=str(Path(args.dataset).resolve()), steps=state.step,
                           train_minutes=round(state.seconds / 60, 2), resolution=[frames.width, frames.height],
                           n_gaussians=model.n_gaussians + model.n_teeth, n_face_gaussians=model.n_gaussians,
                           n_teeth=model.n_teeth, n_blendshapes=model.config.n_blendshapes,
                           sh_degree=model.config.sh_degree, background=list(trainer.cfg.background), metrics=metrics)
    summary = {"avatar": str(bundle.root), "steps": state.step, "n_gaussians": model.n_gaussians + model.n_teeth, **metrics}
    if args.progress == "json":
        print(json.dumps({"stage": "train neutral", "done": True, **summary}))
    else:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float) and k in
                          ("train_psnr", "test_psnr", "test_mouth_psnr"))
        print(f"wrote {bundle.root}: {summary['n_gaussians']} Gaussians after {state.step} steps; {shown}")


# ---------------------------------------------------------------------------- Stage 2


def add_emotion_parser(stages) -> None:
    p = stages.add_parser("emotion", help="Stage 2: the spatial-audio-emotion attention (Gaussian offsets over Stage 1)")
    p.add_argument("dataset", help="dataset folder (emotalker-dataset/1)")
    p.add_argument("--avatar", required=True, help="avatar folder holding Stage 1 (and A2E, whose audio features Stage 2 shares)")
    add_emotion_options(p)
    p.set_defaults(func=run_train_emotion)


def add_emotion_options(p, prefix: str = "") -> None:
    """Stage 2's options (`prefix` keeps them apart inside `train all`)."""
    p.add_argument(f"--{prefix}steps", dest="emotion_steps", type=int, default=2000, help="training steps, one frame each (default 2000)")
    p.add_argument("--resolution", type=int, default=None, help="longer image side to train at (default: Stage 1's)")
    p.add_argument("--no-null-token", action="store_true", help="ablation: mask out the null token (the paper's 'w/o null vector')")
    p.add_argument("--tune-neutral", type=float, default=0.0, metavar="SCALE",
                   help="also tune Stage 1 at SCALE times its own learning rates (default 0: frozen)")
    p.add_argument("--text-checkpoint", default=None, help="local open_clip checkpoint: CLIP text embeddings for emotion/intensity")
    p.add_argument("--text-model", default="ViT-B-32", help="open_clip model name of --text-checkpoint (default ViT-B-32)")
    p.add_argument("--vgg-weights", default=None, help="local VGG16 weights file: adds the 0.1 x VGG feature loss")
    p.add_argument("--eval-stride", type=int, default=5, help="evaluate every Nth test frame at the end (default 5)")
    if not prefix:
        p.add_argument("--device", default="auto", help="auto | cpu | cuda")
        p.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
        p.add_argument("--resume", action="store_true", help="continue from the bundle's emotion checkpoint")
        p.add_argument("--seed", type=int, default=0)


def emotion_config(args):
    from emotalker.core.models.bundle import AvatarBundle
    from emotalker.core.base.errors import InputError
    from emotalker.core.training.emotion import TrainEmotionConfig

    if args.emotion_steps < 1:
        raise InputError(None, "--steps must be at least 1")
    resolution, background = args.resolution, (1.0, 1.0, 1.0)
    neutral = AvatarBundle.open(args.avatar).manifest().get("stages", {}).get("neutral", {})
    if resolution is None and neutral.get("resolution"):
        resolution = max(neutral["resolution"])
    background = tuple(neutral.get("background", background))
    return TrainEmotionConfig(steps=args.emotion_steps, resolution=resolution, background=background,
                              use_null=not args.no_null_token, neutral_lr_scale=args.tune_neutral,
                              text_checkpoint=args.text_checkpoint, text_model=args.text_model,
                              vgg_weights=args.vgg_weights, eval_stride=max(1, args.eval_stride), seed=args.seed)


def run_train_emotion(args) -> None:
    import json

    from emotalker.core.training.emotion import train_emotion

    metrics = train_emotion(args.dataset, args.avatar, emotion_config(args), device=args.device,
                            progress=args.progress, resume=args.resume)
    if args.progress == "json":
        print(json.dumps({"stage": "train emotion", "done": True, "metrics": metrics}))
        return
    line = f"wrote {args.avatar}/emotion.safetensors in {metrics['train_minutes']:.1f} min"
    if "stage2" in metrics:
        line += (f"; test PSNR {metrics['stage2']['psnr']:.2f} dB with Stage 2, "
                 f"{metrics['stage1_only']['psnr']:.2f} dB with Stage 1 alone")
    print(line)


# ---------------------------------------------------------------------------- all stages


def add_all_parser(stages) -> None:
    p = stages.add_parser("all", help="train the three stages in turn: neutral, a2e, emotion")
    p.add_argument("dataset", help="dataset folder (emotalker-dataset/1)")
    p.add_argument("--out", required=True, help="avatar folder to write (created when missing)")
    p.add_argument("--neutral-steps", type=int, default=30000, help="Stage 1 steps (default 30000)")
    p.add_argument("--gaussians", type=int, default=10000, help="Stage 1 face Gaussians at the start (default 10000)")
    p.add_argument("--a2e-steps", type=int, default=2000, help="A2E steps (default 2000)")
    add_emotion_options(p, prefix="emotion-")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    p.add_argument("--resume", action="store_true", help="continue each stage from its checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_train_all)


def run_train_all(args) -> None:
    """Each stage through its own command, so `train all` is exactly the three commands in a row."""
    from emotalker.cli.main import build_parser

    common = ["--device", args.device, "--progress", args.progress, *(["--resume"] if args.resume else [])]
    res = ["--resolution", str(args.resolution)] if args.resolution else []
    runs = [
        ["train", "neutral", args.dataset, "--out", args.out, "--steps", str(args.neutral_steps),
         "--gaussians", str(args.gaussians), "--seed", str(args.seed), *res, *common],
        ["train", "a2e", args.dataset, "--avatar", args.out, "--steps", str(args.a2e_steps), *common],
        ["train", "emotion", args.dataset, "--avatar", args.out, "--steps", str(args.emotion_steps),
         "--seed", str(args.seed), "--eval-stride", str(args.eval_stride), "--tune-neutral", str(args.tune_neutral),
         *res, *(["--no-null-token"] if args.no_null_token else []),
         *(["--text-checkpoint", args.text_checkpoint, "--text-model", args.text_model] if args.text_checkpoint else []),
         *(["--vgg-weights", args.vgg_weights] if args.vgg_weights else []), *common],
    ]
    parser = build_parser()
    for argv in runs:
        stage_args = parser.parse_args(argv)
        stage_args.func(stage_args)
