"""The core worker: the Blender add-on's only way into the model.

`emotalker worker` reads requests as JSON lines on stdin and answers on stdout,
so Blender never imports torch and stays responsive while a job runs.

    -> {"id": 7, "method": "bake", "params": {...}}
    <- {"id": 7, "event": "progress", "stage": "bake", "step": 3, "total": 80, "eta": 12.5}
    <- {"id": 7, "result": {...}}
    <- {"id": 7, "error": {"kind": "input" | "cancelled" | "internal", "message": "..."}}
    -> {"id": 8, "method": "cancel", "params": {"target": 7}}
    -> {"method": "shutdown"}

Jobs run one at a time on a job thread while the main thread keeps reading, so
a cancel arrives mid-job; the job stops at its next progress update (a frame
boundary, where everything written is whole). Anything a job prints goes to
stderr: stdout carries the protocol alone.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from emotalker import __version__
from emotalker.core.base.errors import EmoTalkerError, InputError

PROTOCOL = "emotalker-worker/1"


class Cancelled(Exception):
    """Raised inside a job at its next progress update after a cancel request."""


@dataclass
class JobContext:
    """What a method gets besides its params: progress events and cancellation."""

    job_id: Any
    send: Callable[[dict], None]
    cancel_event: threading.Event = field(default_factory=threading.Event)

    def progress(self, event: dict) -> None:
        """Forward a Progress event; raise Cancelled if the job was cancelled."""
        if self.cancel_event.is_set():
            raise Cancelled()
        self.send({"id": self.job_id, "event": "progress", **event})


Method = Callable[[dict, JobContext], dict]


def method_environment(params: dict, ctx: JobContext) -> dict:
    """Versions and devices, for the add-on's preferences check."""
    import platform

    import torch

    return {
        "protocol": PROTOCOL,
        "emotalker": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": bool(torch.cuda.is_available()),
        "devices": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []),
    }


def default_methods() -> dict[str, Method]:
    """The methods the worker serves; bake and export register theirs here."""
    from emotalker.worker.methods import METHODS

    return {"environment": method_environment, **METHODS}


class Worker:
    """Serves JSON-line requests from `inp`, writing replies to `out`."""

    def __init__(self, inp: TextIO, out: TextIO, methods: dict[str, Method] | None = None):
        self.inp, self.out = inp, out
        self.methods = default_methods() if methods is None else methods
        self._write_lock = threading.Lock()
        self._jobs: queue.Queue = queue.Queue()
        self._running: dict[Any, JobContext] = {}

    def send(self, message: dict) -> None:
        line = json.dumps(message)
        with self._write_lock:
            self.out.write(line + "\n")
            self.out.flush()

    def serve(self) -> None:
        runner = threading.Thread(target=self._run_jobs, daemon=True)
        runner.start()
        self.send({"event": "ready", "protocol": PROTOCOL, "emotalker": __version__})
        for line in self.inp:
            if not line.strip():
                continue
            try:
                request = json.loads(line)
                if not isinstance(request, dict) or not isinstance(request.get("method"), str):
                    raise ValueError("a request is an object with a string 'method'")
            except ValueError as exc:
                self.send({"id": None, "error": {"kind": "protocol", "message": f"bad request line: {exc}"}})
                continue
            method, job_id = request["method"], request.get("id")
            if method == "shutdown":
                break
            if method == "cancel":
                target = (request.get("params") or {}).get("target")
                ctx = self._running.get(target)
                if ctx is not None:
                    ctx.cancel_event.set()
                self.send({"id": job_id, "result": {"cancelled": target, "was_running": ctx is not None}})
                continue
            if method not in self.methods:
                self.send({"id": job_id, "error": {"kind": "protocol", "message": f"unknown method {method!r}"}})
                continue
            ctx = JobContext(job_id, self.send)
            self._running[job_id] = ctx
            self._jobs.put((method, request.get("params") or {}, ctx))
        for ctx in list(self._running.values()):  # stdin closed or shutdown: stop the current job
            ctx.cancel_event.set()
        self._jobs.put(None)
        runner.join()

    def _run_jobs(self) -> None:
        while (item := self._jobs.get()) is not None:
            method, params, ctx = item
            try:
                if ctx.cancel_event.is_set():
                    raise Cancelled()
                self.send({"id": ctx.job_id, "result": self.methods[method](params, ctx)})
            except Cancelled:
                self.send({"id": ctx.job_id, "error": {"kind": "cancelled", "message": "cancelled"}})
            except InputError as exc:
                self.send({"id": ctx.job_id, "error": {"kind": "input", "message": str(exc)}})
            except EmoTalkerError as exc:
                self.send({"id": ctx.job_id, "error": {"kind": "input", "message": str(exc)}})
            except Exception as exc:  # a bug: report it, keep serving
                traceback.print_exc(file=sys.stderr)
                self.send({"id": ctx.job_id, "error": {"kind": "internal", "message": f"{type(exc).__name__}: {exc}"}})
            finally:
                self._running.pop(ctx.job_id, None)


def serve_stdio() -> None:
    """Run the worker on this process's stdin/stdout (stdout then belongs to the protocol)."""
    protocol_out = sys.stdout
    sys.stdout = sys.stderr  # stray prints from libraries must not corrupt the protocol
    Worker(sys.stdin, protocol_out).serve()
