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
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_render)

    p = sub.add_parser("eval", help="PSNR, SSIM and L1 of an avatar on a dataset split (whole image, head, mouth)")
    p.add_argument("avatar", help="avatar folder")
    p.add_argument("dataset", help="dataset folder")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--json", default=None, metavar="OUT", help="also write the metrics to this JSON file")
    p.add_argument("--resolution", type=int, default=None, help="longer image side (default: the avatar's training size)")
    p.add_argument("--max-frames", type=int, default=0, help="evaluate at most this many evenly spaced frames (0: all)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_eval)


def _open(avatar: str, dataset: str, resolution, device):
    from emotalker.core.blendshapes import load_neutral
    from emotalker.core.bundle import AvatarBundle
    from emotalker.core.dataset import Dataset

    model = load_neutral(avatar, device)
    info = AvatarBundle.open(avatar).manifest()["stages"]["neutral"]
    ds = Dataset.open(dataset)
    if resolution is None and info.get("resolution"):
        resolution = max(info["resolution"])
    return model, ds, resolution, tuple(info.get("background", (1.0, 1.0, 1.0)))


def run_render(args) -> None:
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image

    from emotalker.core.device import resolve_device
    from emotalker.core.errors import InputError
    from emotalker.core.eval_neutral import render_frame
    from emotalker.core.fileio import atomic_path
    from emotalker.core.frames import FrameSet

    if ":" not in args.frames:
        raise InputError(args.frames, "--frames must be DATASET:CLIP")
    dataset, clip = args.frames.rsplit(":", 1)
    device = resolve_device(args.device)
    model, ds, resolution, bg = _open(args.avatar, dataset, args.resolution, device)
    ds.clip(clip)  # InputError naming dataset.json when the clip is unknown
    frames = FrameSet(ds, [clip], resolution, background=bg, device=device)
    start, end = 0, len(frames)
    if args.range:
        try:
            a, b = args.range.split(":")
            start, end = int(a or 0), int(b or len(frames))
        except ValueError:
            raise InputError(None, f"--range must be START:END, got {args.range!r}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(max(start, 0), min(end, len(frames))):
        frame, rgb, _ = render_frame(model, frames, i)
        img = torch.cat([frame.image, rgb], 1) if args.compare else rgb
        arr = (img.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        with atomic_path(out / f"{frame.t:06d}.png") as tmp:
            Image.fromarray(arr).save(tmp, format="PNG")
    print(f"wrote {min(end, len(frames)) - max(start, 0)} frames to {out}")


def run_eval(args) -> None:
    import json

    import numpy as np

    from emotalker.core.device import resolve_device
    from emotalker.core.errors import InputError
    from emotalker.core.eval_neutral import evaluate
    from emotalker.core.fileio import write_json
    from emotalker.core.frames import FrameSet

    device = resolve_device(args.device)
    model, ds, resolution, bg = _open(args.avatar, args.dataset, args.resolution, device)
    ids = [c.id for c in ds.split(args.split)]
    if not ids:
        raise InputError(args.dataset, f"no clips in the {args.split} split")
    frames = FrameSet(ds, ids, resolution, background=bg, device=device)
    idx = list(range(len(frames)))
    if args.max_frames and args.max_frames < len(frames):
        idx = np.unique(np.linspace(0, len(frames) - 1, args.max_frames).round().astype(int)).tolist()
    metrics = {"split": args.split, "resolution": [frames.width, frames.height], **evaluate(model, frames, idx)}
    if args.json:
        write_json(args.json, metrics)
    print(json.dumps(metrics, indent=2))
