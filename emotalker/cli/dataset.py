"""Dataset commands: `make-sample`, `import-tracking`, `show-dataset`."""

from __future__ import annotations


def add_parsers(sub) -> None:
    p = sub.add_parser("make-sample", help="render a synthetic emotional talking-head dataset (espeak-ng + Blender Cycles)")
    p.add_argument("output", help="dataset folder to write (a run with the same settings resumes)")
    p.add_argument("--preset", choices=("ci", "default"), default="default",
                   help="ci: a few short, small clips in seconds; default: a training-sized set")
    p.add_argument("--clips", type=int, help="number of clips (overrides the preset)")
    p.add_argument("--resolution", type=int, help="frame width and height in pixels (overrides the preset)")
    p.add_argument("--seed", type=int, help="random seed (overrides the preset)")
    p.add_argument("--duration", type=float, help="seconds a clip (overrides the preset)")
    p.add_argument("--flame", help="animate this flame_model.npz instead of the procedural head")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    p.set_defaults(func=run_make_sample)

    p = sub.add_parser("import-tracking", help="convert a FLAME tracker's output (one clip) into a dataset clip")
    p.add_argument("input", help="the tracker's export folder (or its transforms.json)")
    p.add_argument("output", help="dataset folder; made if absent, else the clip is added")
    p.add_argument("--format", required=True, choices=("vhap",), help="vhap: VHAP / GaussianAvatars export (docs/import_tracking.md)")
    p.add_argument("--flame", required=True, help="the FLAME model the tracker used, as flame_model.npz (see convert-flame)")
    p.add_argument("--audio", help="the clip's sound (any format soundfile reads); required for a new clip")
    p.add_argument("--clip-id", help="clip name (default: the export folder's name)")
    p.add_argument("--emotion", default="neutral", help="the clip's emotion (one of the 8 MEAD categories)")
    p.add_argument("--intensity", type=float, default=1.0, help="the clip's emotion intensity, 0-3")
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument("--fps", type=float, default=25.0, help="the clip's frame rate")
    p.add_argument("--camera", type=int, help="camera_index to take from a multi-view export (default: the first frame's)")
    p.set_defaults(func=run_import)

    p = sub.add_parser("show-dataset", help="a contact sheet of a dataset: one row per emotion, intensity across")
    p.add_argument("dataset", help="dataset folder")
    p.add_argument("output", help="PNG to write")
    p.add_argument("--thumb", type=int, default=128, help="thumbnail size in pixels")
    p.set_defaults(func=run_show)


def run_make_sample(args) -> None:
    import time
    from dataclasses import replace

    from emotalker.sample.generate import PRESETS, make_sample

    cfg = PRESETS[args.preset]
    over = {k: getattr(args, k) for k in ("clips", "resolution", "seed", "duration") if getattr(args, k) is not None}
    cfg = replace(cfg, **over)
    model = None
    if args.flame:
        from emotalker.core.rig.flame import FlameModel

        model = FlameModel.load(args.flame)
    start = time.monotonic()
    make_sample(args.output, cfg, model=model, progress=args.progress)
    print(f"wrote {args.output}: {cfg.clips} clips at {cfg.resolution}x{cfg.resolution} in {time.monotonic() - start:.1f} s")


def run_import(args) -> None:
    import importlib
    from pathlib import Path

    from emotalker.core.datasets.importers import FORMATS
    from emotalker.core.datasets.importers.vhap import ImportOptions

    module = importlib.import_module(FORMATS[args.format])
    opts = ImportOptions(flame=Path(args.flame), audio=Path(args.audio) if args.audio else None, clip_id=args.clip_id,
                         emotion=args.emotion, intensity=args.intensity, split=args.split, fps=args.fps, camera=args.camera)
    module.import_vhap(args.input, args.output, opts)


def run_show(args) -> None:
    from emotalker.core.datasets.dataset import Dataset
    from emotalker.core.datasets.dataset_sheet import dataset_sheet

    dataset_sheet(Dataset.open(args.dataset), args.output, thumb=args.thumb)
    print(f"wrote {args.output}")
