"""`emotalker worker`: the JSON-lines server the Blender add-on talks to."""

from __future__ import annotations


def add_parsers(sub) -> None:
    p = sub.add_parser("worker", help="serve the Blender add-on over JSON lines on stdin/stdout")
    p.set_defaults(func=run_worker)


def run_worker(args) -> None:
    from emotalker.worker.server import serve_stdio

    serve_stdio()
