"""`emotalker render` and `emotalker eval`: an avatar on tracked dataset frames."""

from __future__ import annotations


def add_parsers(sub) -> None:
    p = sub.add_parser("render", help="render an avatar on a dataset clip's tracked frames (PNG files)")
    p.add_argument("avatar", help="avatar folder")
    p.add_argument("--frames", required=True, metavar="DATASET:CLIP", help="a dataset folder and one of its clips")
    p.add_argument("--out", required=True, help="folder for the PNG frames")
    p.add_argument("--range", default=None, metavar="START:END", help="frames START..END-1 (default: all)")
    p.add_argument("--resolution", type=int, default=None, help="longer image side (default: the avatar's training size)")
    p.add_argument("--compare", action="store_true", help="ground truth left, render right")
    add_emotion_flags(p)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_render)

    p = sub.add_parser("eval", help="PSNR, SSIM and L1 of an avatar on a dataset split (whole image, head, mouth)")
    p.add_argument("avatar", help="avatar folder")
    p.add_argument("dataset", help="dataset folder")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--json", default=None, metavar="OUT", help="also write the metrics to this JSON file")
    p.add_argument("--resolution", type=int, default=None, help="longer image side (default: the avatar's training size)")
    p.add_argument("--max-frames", type=int, default=0, help="evaluate at most this many evenly spaced frames (0: all)")
    add_emotion_flags(p)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_eval)


def add_emotion_flags(p) -> None:
    p.add_argument("--no-emotion", action="store_true", help="Stage 1 alone, without Stage 2's emotional offsets")
    p.add_argument("--driver", choices=("tracking", "a2e"), default="tracking",
                   help="FLAME expression/jaw/neck from the tracking (self-driven) or from the avatar's A2E on the clip's audio")


def _emotion_frames(args, avatar, ds, ids, resolution, bg, device):
    """EmotionFrames when Stage 2 or the A2E driver is in play, else None."""
    from emotalker.core.models.bundle import AvatarBundle
    from emotalker.core.datasets.emotion_frames import EmotionFrames, a2e_params
    from emotalker.core.training.emotion import feature_config

    if not avatar.uses_emotion and args.driver == "tracking":
        return None
    bundle = AvatarBundle.open(args.avatar)
    override = None
    if args.driver == "a2e":
        from emotalker.core.models.a2e import load_a2e

        a2e, _ = load_a2e(bundle, device)
        override = {c: a2e_params(a2e, ds, c, device) for c in ids}
    features = avatar.audio_features or feature_config(bundle)
    return EmotionFrames(ds, ids, features, resolution, bg, device, params_override=override)


def _open(args, dataset: str, device):
    """(Avatar, Dataset, resolution, background) of the command's avatar and dataset."""
    from emotalker.core.models.avatar import Avatar
    from emotalker.core.models.bundle import AvatarBundle
    from emotalker.core.datasets.dataset import Dataset

    bundle = AvatarBundle.open(args.avatar)
    avatar = Avatar.open(bundle, device, use_emotion=not args.no_emotion)
    info = bundle.manifest()["stages"]["neutral"]
    ds = Dataset.open(dataset)
    resolution = args.resolution
    if resolution is None and info.get("resolution"):
        resolution = max(info["resolution"])
    return avatar, ds, resolution, tuple(info.get("background", (1.0, 1.0, 1.0)))


def run_render(args) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from emotalker.core.base.device import resolve_device
    from emotalker.core.base.errors import InputError
    from emotalker.core.evaluation.neutral import render_neutral_frame
    from emotalker.core.base.fileio import atomic_path, make_output_folder
    from emotalker.core.datasets.frames import FrameSet

    if ":" not in args.frames:
        raise InputError(args.frames, "--frames must be DATASET:CLIP")
    dataset, clip = args.frames.rsplit(":", 1)
    device = resolve_device(args.device)
    avatar, ds, resolution, bg = _open(args, dataset, device)
    ds.clip(clip)  # InputError naming dataset.json when the clip is unknown
    frames = FrameSet(ds, [clip], resolution, background=bg, device=device)
    emotion_frames = _emotion_frames(args, avatar, ds, [clip], resolution, bg, device)
    start, end = 0, len(frames)
    if args.range:
        try:
            a, b = args.range.split(":")
            start, end = int(a or 0), int(b or len(frames))
        except ValueError:
            raise InputError(None, f"--range must be START:END, got {args.range!r}") from None
    out = make_output_folder(args.out)
    for i in range(max(start, 0), min(end, len(frames))):
        if emotion_frames is not None:
            from emotalker.core.evaluation.emotion import render_emotion_frame

            frame, rgb, _ = render_emotion_frame(avatar, emotion_frames, i)
        else:
            frame, rgb, _ = render_neutral_frame(avatar.stage1, frames, i)
        img = torch.cat([frame.image, rgb], 1) if args.compare else rgb
        arr = (img.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        with atomic_path(out / f"{frame.t:06d}.png") as tmp:
            Image.fromarray(arr).save(tmp, format="PNG")
    print(f"wrote {min(end, len(frames)) - max(start, 0)} frames to {out}")


def run_eval(args) -> None:
    import json

    import numpy as np

    from emotalker.core.base.device import resolve_device
    from emotalker.core.base.errors import InputError
    from emotalker.core.evaluation.neutral import evaluate
    from emotalker.core.base.fileio import write_json
    from emotalker.core.datasets.frames import FrameSet

    device = resolve_device(args.device)
    avatar, ds, resolution, bg = _open(args, args.dataset, device)
    ids = [c.id for c in ds.split(args.split)]
    if not ids:
        raise InputError(args.dataset, f"no clips in the {args.split} split")
    frames = FrameSet(ds, ids, resolution, background=bg, device=device)
    idx = list(range(len(frames)))
    if args.max_frames and args.max_frames < len(frames):
        idx = np.unique(np.linspace(0, len(frames) - 1, args.max_frames).round().astype(int)).tolist()
    emotion_frames = _emotion_frames(args, avatar, ds, ids, resolution, bg, device)
    if emotion_frames is not None:
        from emotalker.core.evaluation.emotion import evaluate_emotion

        scores = evaluate_emotion(avatar, emotion_frames, idx)
    else:
        scores = evaluate(avatar.stage1, frames, idx)
    metrics = {"split": args.split, "resolution": [frames.width, frames.height], "driver": args.driver,
               "stage2": avatar.uses_emotion, **scores}
    if args.json:
        write_json(args.json, metrics)
    print(json.dumps(metrics, indent=2))
