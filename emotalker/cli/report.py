"""`emotalker report`: an avatar's report page (emotalker.core.evaluation.report), also written when
`train all` ends."""

from __future__ import annotations

import json


def add_parsers(sub) -> None:
    p = sub.add_parser("report", help="write an avatar's report: one self-contained HTML page (scores, renders, "
                                      "grid, clip, curves, settings)")
    p.add_argument("avatar", help="avatar folder")
    p.add_argument("dataset", nargs="?", default=None,
                   help="dataset folder for the held-out parts (default: the one avatar.json records)")
    p.add_argument("--out", default=None, help="HTML file to write (default: AVATAR/report.html)")
    p.add_argument("--frames", type=int, default=8,
                   help="held-out frames scored an emotion (default 8; the report's time grows with it)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_report)


def run_report(args) -> None:
    from emotalker.core.base.errors import InputError

    if args.frames < 1:
        raise InputError("--frames", f"must be at least 1, got {args.frames}")
    write_avatar_report(args.avatar, args.dataset, args.out, device=args.device, frames=args.frames)


def write_avatar_report(avatar, dataset=None, out=None, *, device: str = "auto", frames: int = 8,
                        progress: str = "bar"):
    """The report (emotalker.bake.report_clip); says where it is in a line (a JSON object with progress "json")."""
    from emotalker.bake.report_clip import write_avatar_report as write

    path = write(avatar, dataset, out, device=device, frames=frames)
    if progress == "json":
        print(json.dumps({"stage": "report", "done": True, "report": str(path)}))
    else:
        print(f"wrote {path}")
    return path
