"""`emotalker train <stage>`: one nested subparser a training stage."""

from __future__ import annotations


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="train one stage of an avatar from a dataset")
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    add_neutral_parser(stages)


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

    from emotalker.core.blendshapes import BlendshapeConfig
    from emotalker.core.bundle import AvatarBundle
    from emotalker.core.dataset import Dataset
    from emotalker.core.device import resolve_device
    from emotalker.core.errors import InputError
    from emotalker.core.eval_neutral import evaluate
    from emotalker.core.frames import FrameSet
    from emotalker.core.progress import Progress
    from emotalker.core.train_neutral import NeutralTrainer, TrainNeutralConfig, new_model

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
