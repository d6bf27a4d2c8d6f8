"""The `emotalker` command line.

Each command group lives in its own module under `emotalker.cli` and
exposes `add_parsers(subparsers)`; those modules import torch and the model only
inside their handlers, so `emotalker --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from emotalker import __version__

# One line a command module; their order is the order of `emotalker --help`.
COMMAND_MODULES = (
    "emotalker.cli.flame",
    "emotalker.cli.head",
    "emotalker.cli.worker",
    "emotalker.cli.dataset",
    "emotalker.cli.track",
    "emotalker.cli.train",
    "emotalker.cli.a2e",
    "emotalker.cli.avatar",
    "emotalker.cli.report",
    "emotalker.cli.bake",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emotalker",
        description="Emotional, audio-driven 3D Gaussian head avatars: train, bake, export.",
    )
    parser.add_argument("--version", action="version", version=f"emotalker {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from emotalker.core.base.errors import EmoTalkerError, Interrupted

    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except EmoTalkerError as exc:
        print(f"emotalker: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"emotalker: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except OSError as exc:
        # An I/O fault (a full disk, a folder made read-only mid-run): one line, status 1. Frames and
        # files already written are whole (atomic writes), so a re-run resumes.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"emotalker: error: {where}{exc.strerror or exc}; files already written are intact", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("emotalker: interrupted; files already written are intact", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
