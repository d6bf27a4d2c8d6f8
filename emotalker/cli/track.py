"""`emotalker track`: talking-head videos -> clips of a dataset (the `track` extra: mediapipe)."""

from __future__ import annotations


def add_parsers(sub) -> None:
    p = sub.add_parser("track", help="track talking-head videos into a dataset (landmarks, FLAME fit, mattes, audio) "
                                     "on the CPU; needs the track extra")
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files with sound (any format ffmpeg reads), "
                                                              "one person each; each becomes a clip named after its file")
    p.add_argument("--out", required=True, help="dataset folder; made if absent, else the clips are added "
                                                "(a re-run skips or resumes what is done)")
    p.add_argument("--rig", help="flame_model.npz to fit for a new dataset (default: the procedural head); "
                                 "an existing dataset keeps its own")
    p.add_argument("--emotion", default="neutral", help="the videos' emotion (one of the 8 MEAD categories)")
    p.add_argument("--intensity", type=float, default=1.0, help="the videos' emotion intensity, 0-3")
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate of the clips (the video is resampled)")
    p.add_argument("--resolution", type=int, default=512, help="side of the square frames, in pixels")
    p.add_argument("--clip-id", help="clip name (one video only; default: the video's file name)")
    p.add_argument("--no-sheet", action="store_true", help="skip the contact sheet (clips/<id>/tracking_sheet.png)")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    p.set_defaults(func=run_track)

    from emotalker.cli.options import add_config_options
    from emotalker.track.refine import RefineSettings

    r = sub.add_parser("refine-tracking", help="align every frame's head pose to its pixels through a quick Stage 1 "
                                               "(after `emotalker track`, before training)")
    r.add_argument("dataset", help="dataset folder; its clips' tracking.npz are refined in place (the landmark fit "
                                   "is kept as tracking_landmarks.npz, and every run starts from it)")
    add_config_options(r, RefineSettings)
    r.add_argument("--device", default="auto")
    r.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    r.set_defaults(func=run_refine)


def run_track(args) -> int:
    """Check every video's header first (bad input fails before anything is written), then track each in turn;
    a video that fails later (no face, two faces) is one line on stderr and the others go on (status 2)."""
    import sys
    from pathlib import Path

    from emotalker.core.base.errors import InputError
    from emotalker.core.datasets.writing import check_clip_id, check_labels
    from emotalker.track.landmarks import import_mediapipe
    from emotalker.track.video import probe

    import_mediapipe()  # without the track extra: one line saying how to install it, before anything is read

    if args.clip_id and len(args.videos) > 1:
        raise InputError("--clip-id", f"names one clip, but {len(args.videos)} videos were given")
    if args.clip_id:
        check_clip_id(args.clip_id)
    check_labels(args.emotion, args.intensity, args.split)
    for video in args.videos:
        probe(video)
    from emotalker.track.pipeline import track_video

    failed = 0
    for video in args.videos:
        try:
            track_video(video, Path(args.out), rig=args.rig, emotion=args.emotion, intensity=args.intensity,
                        fps=args.fps, resolution=args.resolution, split=args.split, clip_id=args.clip_id,
                        sheet=not args.no_sheet, progress=args.progress)
        except InputError as exc:
            if len(args.videos) == 1:
                raise
            print(f"emotalker: error: {exc}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0


def run_refine(args) -> int:
    from emotalker.cli.options import config_from_args
    from emotalker.track.refine import RefineSettings, refine_tracking

    refine_tracking(args.dataset, config_from_args(RefineSettings, args), device=args.device, progress=args.progress)
    return 0
