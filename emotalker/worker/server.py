"""The core worker: the Blender add-on's only way into the model.

`emotalker worker` reads requests as JSON lines on stdin and answers on stdout,
so Blender never imports torch and stays responsive while a job runs.

    -> {"id": 7, "method": "bake", "params": {...}}
    <- {"id": 7, "event": "progress", "stage": "bake", "step": 3, "total": 80, "eta": 12.5}
    <- {"id": 7, "result": {...}}
    <- {"id": 7, "error": {"kind": "input" | "cancelled" | "internal" | "protocol", "message": "..."}}
    -> {"id": 8, "method": "cancel", "params": {"target": 7}}
    -> {"method": "shutdown"}

A request is a `Request`: `id` (a string or an integer, unique among the jobs
not finished yet; only `shutdown` may leave it out), `method` and `params` (an
object). Each method's params have a schema, a dataclass (`Method.schema`; see
emotalker/worker/methods.py), read with `from_dict` as the request arrives: an
unknown, missing or mistyped param is answered at once with one error of kind
"input" naming the field. A malformed request (not JSON, not a Request, a bad
id, a cancel whose target is no id, an unknown method) is answered with kind
"protocol", the request's id when it has a valid one; the worker keeps serving.
A line is read bounded (MAX_REQUEST_BYTES) and parsed by the one JSON reader
(depth limit; NaN and Infinity refused), so no line can exhaust memory or end
the worker.

Paths: the worker reads and writes only under the folders its client declared
with `configure` (`Roots`); every path a request names is resolved with
os.path.realpath (so `..` and symlinks cannot step out) and checked as the
request arrives. See docs/architecture.md, "Worker trust model".

Jobs run one at a time on a job thread while the main thread keeps reading, so
a cancel arrives mid-job; the job stops at its next progress update (a frame
boundary, where everything written is whole). Anything a job prints goes to
stderr: stdout carries the protocol alone.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterable, Iterator, TextIO

from emotalker import __version__
from emotalker.core.base.config import from_dict
from emotalker.core.base.errors import EmoTalkerError, InputError
from emotalker.core.base.fileio import parse_json
from emotalker.core.base.limits import MAX_REQUEST_BYTES
from emotalker.core.base.progress import StopRequested

PROTOCOL = "emotalker-worker/1"


class Cancelled(StopRequested):
    """Raised inside a job at its next progress update after a cancel request."""


class Refused(Exception):
    """A request answered with an error before it runs: `kind` "protocol" or "input"."""

    def __init__(self, job_id: Any, kind: str, message: str):
        super().__init__(message)
        self.job_id, self.kind, self.message = job_id, kind, message


@dataclass(frozen=True)
class Request:
    """One request line."""

    method: str
    """The method to run, or `cancel` or `shutdown`."""
    id: Any = None
    """The caller's name for this request, a string or an integer; every reply to it carries it."""
    params: dict[str, Any] | None = None
    """The method's params, an object read into the method's schema."""


@dataclass(frozen=True)
class CancelParams:
    """`cancel`: stop a job at its next progress update (or before it starts)."""

    target: Any
    """The id of the job to stop."""


@dataclass(frozen=True)
class NoParams:
    """A method that takes no params."""


@dataclass(frozen=True)
class ConfigureParams:
    """`configure`: the folders (or single files) this worker may touch from now on; replaces the last set."""

    read: list[str] = field(default_factory=list)
    """Files and folders the worker may read (the avatar, the audio, the inputs the client wrote)."""
    write: list[str] = field(default_factory=list)
    """Folders the worker may write into (the cache and output folders); it may read them too."""


@dataclass(frozen=True)
class PathUse:
    """The paths a request names: those its job reads and those it writes into (None or "" for unset)."""

    read: tuple[str | None, ...] = ()
    write: tuple[str | None, ...] = ()


def _real(path: str, source: str) -> str:
    """`path` with `~`, `..` and every symlink resolved; InputError for one the OS cannot take (a NUL byte)."""
    try:
        return os.path.realpath(os.path.expanduser(path))
    except ValueError as exc:  # embedded NUL, a lone surrogate
        raise InputError(source, f"{path!r} is not a valid path ({exc})") from None


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class Roots:
    """Where the worker may read and write, as real paths; nothing at all until `configure`."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()

    @classmethod
    def configure(cls, params: ConfigureParams) -> "Roots":
        """The roots a `configure` request declares; InputError for an empty path."""
        for name, paths in (("read", params.read), ("write", params.write)):
            if any(not p for p in paths):
                raise InputError("configure params", f"{name} holds an empty path")
        return cls(*(tuple(_real(p, "configure params") for p in paths) for paths in (params.read, params.write)))

    def check(self, use: PathUse, source: str) -> None:
        """InputError naming the first path of `use` outside these roots (writes: the write roots only)."""
        for wanted, roots, verb in ((use.read, self.read + self.write, "read"), (use.write, self.write, "write")):
            for path in filter(None, wanted):
                real = _real(path, source)
                if not any(_under(real, root) for root in roots):
                    declared = ", ".join(roots) or "none declared; send configure first"
                    raise InputError(source, f"{path!r} is outside the folders this worker may {verb} "
                                             f"({declared})")


def is_id(value: Any) -> bool:
    """A request id is a string or an integer (not a bool, which JSON keeps apart)."""
    return isinstance(value, (str, int)) and not isinstance(value, bool)


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


@dataclass(frozen=True)
class Method:
    """A worker method: its params' schema and the function that runs a job with them."""

    schema: type
    """The dataclass the params are read into (with `from_dict`) as the request arrives."""
    run: Callable[[Any, JobContext], dict]
    """(params as `schema`, context) -> the JSON-able result."""
    paths: Callable[[Any], PathUse] | None = None
    """(params as `schema`) -> the paths the job reads and writes, checked against the worker's Roots."""

    def parse(self, params: dict | None, source: str) -> Any:
        """`params` read into the schema; InputError naming `source` and the field at fault."""
        return from_dict(self.schema, {} if params is None else params, source)

    def __call__(self, params: dict | None, ctx: JobContext | None) -> dict:
        """Check the params and run, in one step (the worker takes the two steps apart)."""
        return self.run(self.parse(params, f"{self.run.__name__} params"), ctx)


def method_environment(params: NoParams, ctx: JobContext) -> dict:
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

    return {"environment": Method(NoParams, method_environment), **METHODS}


class Worker:
    """Serves JSON-line requests from `inp`, writing replies to `out`."""

    def __init__(self, inp: Iterable[str | bytes | None], out: TextIO, methods: dict[str, Method] | None = None,
                 roots: Roots = Roots()):
        """`inp`: request lines (str, or bytes as `request_lines` yields them, None for a line too long)."""
        self.inp, self.out, self.roots = inp, out, roots
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
            if line is not None and not line.strip():
                continue
            try:
                request = read_request(line)
                if request.method == "shutdown":
                    break
                self._accept(request)
            except Refused as exc:
                self.send({"id": exc.job_id, "error": {"kind": exc.kind, "message": exc.message}})
            except Exception as exc:  # a bug in checking a request: report it, keep serving
                traceback.print_exc(file=sys.stderr)
                self.send({"id": None, "error": {"kind": "internal", "message": f"{type(exc).__name__}: {exc}"}})
        for ctx in list(self._running.values()):  # stdin closed or shutdown: stop the current job
            ctx.cancel_event.set()
        self._jobs.put(None)
        runner.join()

    def _accept(self, request: Request) -> None:
        """Answer a cancel, or check a job's params and queue it; Refused when it cannot run."""
        if request.id is None:
            raise Refused(None, "protocol", f"bad request: {request.method!r} needs an 'id' (a string or an integer)")
        if request.method == "cancel":
            self._cancel(request)
            return
        if request.method == "configure":
            self._configure(request)
            return
        method = self.methods.get(request.method)
        if method is None:
            raise Refused(request.id, "protocol", f"unknown method {request.method!r}")
        if request.id in self._running:
            raise Refused(request.id, "protocol", f"bad request: id {request.id!r} belongs to a job that has not "
                                                  f"finished")
        try:
            params = method.parse(request.params, f"{request.method} params")
            if method.paths is not None:
                self.roots.check(method.paths(params), f"{request.method} params")
        except InputError as exc:
            raise Refused(request.id, "input", str(exc)) from None
        ctx = JobContext(request.id, self.send)
        self._running[request.id] = ctx
        self._jobs.put((method, params, ctx))

    def _cancel(self, request: Request) -> None:
        try:
            target = from_dict(CancelParams, request.params or {}, "cancel params").target
        except InputError as exc:
            raise Refused(request.id, "protocol", str(exc)) from None
        if not is_id(target):
            raise Refused(request.id, "protocol", f"cancel params: target must be a job's id (a string or an "
                                                  f"integer), got {target!r}")
        ctx = self._running.get(target)
        if ctx is not None:
            ctx.cancel_event.set()
        self.send({"id": request.id, "result": {"cancelled": target, "was_running": ctx is not None}})

    def _configure(self, request: Request) -> None:
        """Replace the roots, in order with the requests around it (a job keeps the check it passed)."""
        try:
            self.roots = Roots.configure(from_dict(ConfigureParams, request.params or {}, "configure params"))
        except InputError as exc:
            raise Refused(request.id, "input", str(exc)) from None
        self.send({"id": request.id, "result": {"read": list(self.roots.read), "write": list(self.roots.write)}})

    def _run_jobs(self) -> None:
        while (item := self._jobs.get()) is not None:
            method, params, ctx = item
            reply = self._run_job(method, params, ctx)
            self._running.pop(ctx.job_id, None)  # the id is free again once the caller hears the job ended
            self.send(reply)

    def _run_job(self, method: Method, params: Any, ctx: JobContext) -> dict:
        """The job's final reply: its result, or an error of kind cancelled, input or internal."""
        try:
            if ctx.cancel_event.is_set():
                raise Cancelled()
            result = method.run(params, ctx)
            json.dumps(result)  # a result that cannot travel is a bug, reported like one
            return {"id": ctx.job_id, "result": result}
        except Cancelled:
            return {"id": ctx.job_id, "error": {"kind": "cancelled", "message": "cancelled"}}
        except EmoTalkerError as exc:
            return {"id": ctx.job_id, "error": {"kind": "input", "message": str(exc)}}
        except Exception as exc:  # a bug: report it, keep serving
            traceback.print_exc(file=sys.stderr)
            return {"id": ctx.job_id, "error": {"kind": "internal", "message": f"{type(exc).__name__}: {exc}"}}


def request_lines(stream: BinaryIO, limit: int = MAX_REQUEST_BYTES) -> Iterator[bytes | None]:
    """The lines of `stream` without their newline, never holding more than `limit` + 1 bytes of one;
    None stands for a line longer than `limit`, whose rest is skipped up to its newline."""
    while line := stream.readline(limit + 1):
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := stream.readline(limit + 1)) and not rest.endswith(b"\n"):
                pass
            yield None
        else:
            yield line.rstrip(b"\n")


def read_request(line: str | bytes | None) -> Request:
    """One request line -> Request; Refused (kind "protocol") naming what is wrong with it."""
    try:
        if line is None or len(line) > MAX_REQUEST_BYTES:
            raise InputError(None, f"longer than {MAX_REQUEST_BYTES} bytes")
        text = line.decode("utf-8") if isinstance(line, bytes) else line
        data = parse_json(text, None, "JSON line", allow_nan=False)
    except UnicodeDecodeError as exc:
        raise Refused(None, "protocol", f"bad request line: not UTF-8 ({exc})") from None
    except InputError as exc:
        raise Refused(None, "protocol", f"bad request line: {exc.problem}") from None
    job_id = data.get("id") if isinstance(data, dict) else None
    job_id = job_id if is_id(job_id) else None  # replies carry the id only when it is one
    try:
        request = from_dict(Request, data, "bad request")
    except InputError as exc:
        raise Refused(job_id, "protocol", str(exc)) from None
    if request.id is not None and not is_id(request.id):
        raise Refused(None, "protocol", f"bad request: id must be a string or an integer, got {request.id!r}")
    return request


def serve_stdio() -> None:
    """Run the worker on this process's stdin/stdout (stdout then belongs to the protocol)."""
    protocol_out = sys.stdout
    sys.stdout = sys.stderr  # stray prints from libraries must not corrupt the protocol
    Worker(request_lines(sys.stdin.buffer), protocol_out).serve()
