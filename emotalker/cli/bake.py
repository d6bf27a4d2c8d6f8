"""`emotalker bake`, `emotalker bake-batch` and `emotalker demo`."""

from __future__ import annotations

import os
from pathlib import Path


def add_parsers(sub) -> None:
    p = sub.add_parser("bake", help="bake audio + emotion tracks into per-frame Gaussians: PLY sequence, PNG frames, MP4")
    p.add_argument("avatar", help="avatar bundle folder (Stage 1 at least; A2E unless --flame-curves)")
    p.add_argument("--audio", required=True, help="dialogue audio (any format soundfile reads); timeline frame 1 is its start")
    p.add_argument("--tracks", help="emotion tracks JSON (emotalker-tracks/1: emotion.<name>, intensity, blink)")
    p.add_argument("--emotion", help="shorthand for a constant emotion (one of the 8 MEAD categories)")
    p.add_argument("--intensity", type=float, help="shorthand's constant intensity, 0..3 (default 1)")
    p.add_argument("--out", required=True, help="output folder (a re-run resumes, skipping finished frames)")
    p.add_argument("--ply", action="store_true", help="write the PLY sequence <name>_NNNNNN.ply and its <name>.json sidecar")
    p.add_argument("--png", action="store_true", help="write RGBA PNG frames <name>_NNNNNN.png")
    p.add_argument("--mp4", action="store_true", help="write <name>.mp4 with the audio (renders the PNG frames too)")
    p.add_argument("--frames", help="timeline frame range START:END, inclusive (default: the whole audio)")
    p.add_argument("--fps", type=float, help="frame rate (default: the tracks file's, else the avatar's, else 25)")
    p.add_argument("--camera", help="camera JSON (emotalker-camera/1: OpenCV viewmat, K, width, height); default: a front camera")
    p.add_argument("--resolution", type=int, default=512, help="width and height of the default front camera (default 512)")
    p.add_argument("--flame-curves", help="per-frame FLAME curves .npz to use instead of running A2E (e.g. an edited <name>_flame.npz)")
    p.add_argument("--sh-degree", type=int, choices=(0, 1, 2, 3), help="SH degree of the PLY frames (default: the avatar's)")
    p.add_argument("--up-axis", choices=("y", "z"), default="y", help="up axis of the PLY frames (z for Blender / Unreal)")
    p.add_argument("--name", help="file name stem of the outputs (default: the audio's)")
    p.add_argument("--no-emotion", action="store_true", help="Stage 1 alone even when the avatar has Stage 2")
    p.add_argument("--overwrite", action="store_true", help="delete frames baked from other inputs and start over")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is fastest on a busy machine)")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    p.set_defaults(func=run_bake)

    p = sub.add_parser("bake-batch", help="bake many clips (a manifest of audio + tracks) in parallel processes, resumably")
    p.add_argument("manifest", help="batch manifest JSON (emotalker-batch/1; see emotalker/bake/batch.py)")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    p.add_argument("--out", help="folder every clip's output must lie in (default: the manifest's folder)")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    p.set_defaults(func=run_bake_batch)

    p = sub.add_parser("demo", help="bake the built-in sample: 5 s of speech, happy cross-fading to sad -> PLY, MP4, contact sheet")
    p.add_argument("--out", default="emotalker-demo", help="output folder (default ./emotalker-demo)")
    p.add_argument("--resolution", type=int, default=256, help="video width and height (default 256)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is fastest on a busy machine)")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    p.set_defaults(func=run_demo)


def _options_from_args(args):
    from emotalker.bake.clip import BakeOptions
    from emotalker.core.base.device import resolve_device

    export = dict(ply=args.ply, png=args.png, mp4=args.mp4)
    if not any(export.values()):
        export["ply"] = True  # the bake's main product when nothing is asked for
    return BakeOptions(avatar=args.avatar, audio=args.audio, out=args.out, tracks=args.tracks, emotion=args.emotion,
                       intensity=args.intensity, frames=args.frames, fps=args.fps, camera=args.camera,
                       resolution=args.resolution, flame_curves=args.flame_curves, sh_degree=args.sh_degree,
                       up_axis=args.up_axis, name=args.name, no_emotion=args.no_emotion, overwrite=args.overwrite,
                       progress=args.progress, device=str(resolve_device(args.device)), threads=args.threads,
                       **export)


def run_bake(args) -> None:
    import json

    from emotalker.bake.clip import bake_clip

    result = bake_clip(_options_from_args(args))
    if args.progress == "json":
        print(json.dumps({"stage": "bake", "done": True, **result.to_dict()}))
        return
    print(f"baked frames {result.frame_start}..{result.frame_end} ({result.written} written, {result.skipped} already "
          f"done), {result.n_gaussians} Gaussians a frame, Stage 2 {'on' if result.emotion_stage else 'off'}")
    for kind, path in result.outputs.items():
        print(f"  {kind:<12} {path}")


def bake_clip_job(job) -> dict:
    """One clip of a batch (runs in a worker process): the manifest fields -> bake_clip, quietly."""
    from dataclasses import replace

    from emotalker.bake.clip import BakeOptions, bake_clip

    fields = {k: v for k, v in job.fields.items()}
    fields.setdefault("ply", not (fields.get("png") or fields.get("mp4")))
    opts = replace(BakeOptions.from_fields(fields), progress="none", name=fields.get("name") or job.id)
    return bake_clip(opts).to_dict() | {"out": str(job.out)}


def run_bake_batch(args) -> int:
    from emotalker.bake.batch import load_manifest, run_batch
    from emotalker.core.base.errors import InputError

    manifest = Path(args.manifest)
    root = Path(args.out).resolve() if args.out else manifest.resolve().parent
    for job in load_manifest(manifest):
        # Paths in a manifest are untrusted: every clip writes inside the batch's output folder.
        if not _inside(job.out, root):
            raise InputError(manifest, f"clip {job.id!r} would write to {job.out}, outside {root}; "
                                       f"give it an 'out' inside that folder (or pass --out)")
    summary = run_batch(manifest, bake_clip_job, workers=args.workers, progress=args.progress)
    print(summary.report())
    return summary.exit_code


def _inside(path: Path, root: Path) -> bool:
    resolved = Path(os.path.realpath(path))
    return resolved == root or root in resolved.parents


def run_demo(args) -> None:
    from emotalker.bake.demo import run_demo as demo

    demo(args.out, resolution=args.resolution, progress=args.progress, log=print, threads=args.threads)
