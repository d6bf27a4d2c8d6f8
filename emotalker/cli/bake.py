"""`emotalker bake`, `emotalker bake-batch` and `emotalker demo`.

Their options are generated (emotalker/cli/options.py) from the dataclasses of
emotalker/bake/clip.py: `ClipSpec` (what a clip is) and `RunOptions` (how a run
runs), which hold every default and help text.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from emotalker.bake.clip import ClipSpec, RunOptions
from emotalker.bake.demo import DEMO_OUT, DEMO_RESOLUTION
from emotalker.cli.options import add_config_options, config_from_args
from emotalker.core.base.config import field_docs


def add_parsers(sub) -> None:
    p = sub.add_parser("bake", help="bake audio + emotion tracks into per-frame Gaussians: PLY / SPZ / compressed PLY "
                                    "sequences, OpenUSD, PNG frames, MP4")
    p.add_argument("avatar", help=field_docs(ClipSpec)["avatar"])
    add_config_options(p, ClipSpec, skip={"avatar"})
    add_config_options(p, RunOptions)
    p.set_defaults(func=run_bake)

    p = sub.add_parser("bake-batch", help="bake many clips (a manifest of audio + tracks) in parallel processes, resumably")
    p.add_argument("manifest", help="batch manifest JSON (emotalker-batch/1; see emotalker/bake/batch.py)")
    p.add_argument("--workers", type=int, default=1,
                   help="clips baked at once, each in a process of its own (default 1)")
    p.add_argument("--out", help="folder every clip's output must lie in (default: the manifest's folder)")
    # The manifest says what each clip is; how they run is the command line's, for every clip. The
    # clips' processes share the CPUs unless told otherwise.
    add_config_options(p, RunOptions, defaults={"device": "cpu"})
    p.set_defaults(func=run_bake_batch)

    p = sub.add_parser("demo", help="bake the built-in sample: 5 s of speech, happy cross-fading to sad -> PLY, MP4, contact sheet")
    add_config_options(p, ClipSpec, skip=_all_but(ClipSpec, {"out", "resolution"}),
                       defaults={"out": DEMO_OUT, "resolution": DEMO_RESOLUTION})
    add_config_options(p, RunOptions, skip=_all_but(RunOptions, {"threads", "progress"}))
    p.set_defaults(func=run_demo)


def _all_but(cls: type, keep: set[str]) -> set[str]:
    """The field names of `cls` except `keep`: what a command leaves out of its options."""
    return {f.name for f in dataclasses.fields(cls)} - keep


def bake_request(args) -> tuple[ClipSpec, RunOptions]:
    """The clip and the run options of a parsed `bake` command line."""
    clip = config_from_args(ClipSpec, args, skip={"avatar"}, avatar=args.avatar).with_default_export()
    return clip, config_from_args(RunOptions, args)


def run_bake(args) -> None:
    import json

    from emotalker.bake.clip import bake_clip

    result = bake_clip(*bake_request(args))
    if args.progress == "json":
        print(json.dumps({"stage": "bake", "done": True, **result.to_dict()}))
        return
    print(f"baked frames {result.frame_start}..{result.frame_end} ({result.written} written, {result.skipped} already "
          f"done), {result.n_gaussians} Gaussians a frame, Stage 2 {'on' if result.emotion_stage else 'off'}")
    for kind, path in result.outputs.items():
        print(f"  {kind:<12} {path}")


def bake_clip_job(job, run: RunOptions) -> dict:
    """One clip of a batch (runs in a worker process): its ClipSpec baked with the batch's run options, quietly."""
    from emotalker.bake.clip import bake_clip

    return bake_clip(job.spec, dataclasses.replace(run, progress="none")).to_dict() | {"out": str(job.out)}


def run_bake_batch(args) -> int:
    import functools

    from emotalker.bake.batch import load_manifest, run_batch
    from emotalker.core.base.errors import InputError

    manifest = Path(args.manifest)
    root = Path(args.out).resolve() if args.out else manifest.resolve().parent
    for job in load_manifest(manifest):
        # Paths in a manifest are untrusted: every clip writes inside the batch's output folder.
        if not _inside(job.out, root):
            raise InputError(manifest, f"clip {job.id!r} would write to {job.out}, outside {root}; "
                                       f"give it an 'out' inside that folder (or pass --out)")
    job_fn = functools.partial(bake_clip_job, run=config_from_args(RunOptions, args))
    summary = run_batch(manifest, job_fn, workers=args.workers, progress=args.progress)
    print(summary.report())
    return summary.exit_code


def _inside(path: Path, root: Path) -> bool:
    resolved = Path(os.path.realpath(path))
    return resolved == root or root in resolved.parents


def run_demo(args) -> None:
    from emotalker.bake.demo import run_demo as demo

    demo(args.out, resolution=args.resolution, progress=args.progress, log=print, threads=args.threads)
