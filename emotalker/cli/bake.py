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

    p = sub.add_parser("bake-batch", help="bake many clips (a manifest of audio + tracks) in parallel processes "
                                          "or on a Ray cluster, resumably")
    p.add_argument("manifest", help="batch manifest JSON (emotalker-batch/1; see emotalker/bake/batch.py)")
    p.add_argument("--workers", type=int, default=None,
                   help="clips baked at once (default: 1 locally; with --engine ray, as many as the cluster's "
                        "CPUs hold at --cpus-per-job)")
    p.add_argument("--out", help="folder every clip's output must lie in (default: the manifest's folder)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: a process per clip on this machine; ray: a Ray task per clip (the farm extra; "
                        "docs/farm.md)")
    p.add_argument("--address", default=None,
                   help="with --engine ray: the cluster, auto (the one `ray start` made here) or HOST:PORT "
                        "(default: a private cluster on this machine)")
    p.add_argument("--cpus-per-job", type=float, default=1.0, help="with --engine ray: CPUs a clip's task asks for")
    p.add_argument("--gpus-per-job", type=float, default=0.0,
                   help="with --engine ray: GPUs a clip's task asks for (fractions share a GPU; pair with --device cuda)")
    p.add_argument("--max-retries", type=int, default=1,
                   help="how many times a clip whose process or node was lost runs again (default 1)")
    p.add_argument("--clip-index", type=int, default=None,
                   help="bake only the clip at this 0-based index of the manifest (one clip per farm task; "
                        "the whole manifest is still checked)")
    p.add_argument("--summary", help="where the batch's JSON summary goes (default <manifest stem>.summary.json "
                                     "beside the manifest)")
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


_AVATARS = None
"""This process's AvatarCache: a Ray worker process bakes clip after clip and loads each avatar once."""


def bake_clip_job(job, run: RunOptions) -> dict:
    """One clip of a batch (runs in a worker process): its ClipSpec baked with the batch's run options, quietly.

    The result (kept in the clip's record) also says which process baked it and how many avatars that
    process had loaded by then."""
    global _AVATARS
    from emotalker.bake.clip import AvatarCache, bake_clip

    _AVATARS = _AVATARS or AvatarCache()
    result = bake_clip(job.spec, dataclasses.replace(run, progress="none"), avatars=_AVATARS).to_dict()
    return result | {"out": str(job.out), "pid": os.getpid(), "avatar_loads": _AVATARS.loads}


def run_bake_batch(args) -> int:
    import functools
    import json

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
    ray = None
    if args.engine == "ray":
        from emotalker.bake.farm import RayOptions

        ray = RayOptions(args.address, args.cpus_per_job, args.gpus_per_job)
    elif args.address or args.cpus_per_job != 1.0 or args.gpus_per_job:
        raise InputError("--engine", "--address, --cpus-per-job and --gpus-per-job are for --engine ray")
    summary = run_batch(manifest, job_fn, workers=args.workers, progress=args.progress, engine=args.engine, ray=ray,
                        max_retries=args.max_retries, summary_path=args.summary, only=args.clip_index)
    if args.progress == "json":
        print(json.dumps({"stage": "bake-batch", "done": True, **summary.to_dict()}))
    else:
        print(summary.report())
    return summary.exit_code


def _inside(path: Path, root: Path) -> bool:
    resolved = Path(os.path.realpath(path))
    return resolved == root or root in resolved.parents


def run_demo(args) -> None:
    from emotalker.bake.demo import run_demo as demo

    demo(args.out, resolution=args.resolution, progress=args.progress, log=print, threads=args.threads)
