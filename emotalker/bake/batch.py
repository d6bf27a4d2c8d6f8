"""Many clips in parallel processes: the machinery behind `emotalker bake-batch`.

Manifest (`MANIFEST.json`):

    {"format": "emotalker-batch/1",
     "defaults": {"avatar": "avatar/", "ply": true, "fps": 25},
     "clips": [{"id": "line_001", "audio": "audio/line_001.wav", "tracks": "tracks/line_001.json"},
               {"id": "line_002", "audio": "audio/line_002.wav", "emotion": "happy", "intensity": 2.0,
                "out": "/renders/line_002"}]}

- `clips` (required): a list of one object per clip: an `id` and the fields of
  a `ClipSpec` (emotalker/bake/clip.py: what a clip is). `audio` and `avatar`
  are required; `id` defaults to the audio file's stem and must be unique
  (letters, digits, `._-`).
- `defaults` (optional): an object of fields every clip gets unless it sets them
  itself.
- Every field is type-checked as the ClipSpec field it is, defaults on their
  own: booleans are JSON true/false (never "no"), numbers are JSON numbers,
  paths are strings. An unknown or mistyped field is one InputError naming the
  manifest and the field (`defaults.ply`, `clips[2].fps`), before any clip runs.
- `out` defaults to `bake/<id>` beside the manifest, `name` to the id, and the
  outputs to the PLY sequence when a clip asks for none. Two clips whose `out`
  is the same folder (paths resolved, defaults included) are refused before any
  clip runs: they would share the folder's resume record.
- Relative paths in the fields `audio tracks out avatar camera flame_curves`
  are taken relative to the manifest's folder.
- How the clips run (device, threads, ...: `RunOptions`) is not the manifest's
  but the command line's, one for the whole batch.

Running (`engine`): "local" runs each clip in a (spawned) process of its own,
`workers` at once (why, see `_ClipProcesses`); "ray" runs each clip as a Ray
task on a Ray cluster (emotalker/bake/farm.py, docs/farm.md). Both hand every
clip to the same `_run_clip` and settle its outcome with the same `_settle`,
so the summary, the records and the outputs are the same whichever runs them.
- A clip whose process is lost without a result (kill -9, the OOM killer, a
  crash in native code; with Ray also its node lost) runs again, after the
  clips already waiting, `max_retries` times (default once); lost again, it
  fails. Only that clip: the others run on. A clip that fails by raising is not
  retried (the same input fails the same way).
- SIGINT (Ctrl-C) and SIGTERM stop every clip's process (SIGTERM, SIGKILL after
  STOP_GRACE_S), mark the clips they were running "interrupted" in the status
  file and raise `Interrupted` (the CLI prints one line and exits 130 or 143).
  Clips ignore a Ctrl-C sent to the whole process group: the batch stops them.

Resuming: when a clip's job succeeds, `<out>/.emotalker-clip.json` records a
digest of the clip's fields as the manifest gives them (paths resolved); a
re-run skips clips whose record matches and runs the rest (a clip's own bake
resumes its frames, which are written atomically, so an interrupted or lost
clip loses no finished frame). `<manifest stem>.status.json` beside the
manifest, rewritten as clips start and end, holds every clip's state (pending,
running, done, skipped, failed, interrupted), each failure's reason, the clips
retried and why, and the signal that interrupted the batch. When the batch
ends (or is interrupted), `<manifest stem>.summary.json` holds its summary
(`BatchSummary.to_dict`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import signal
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field, replace
from multiprocessing import connection
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from emotalker.bake.clip import ClipSpec, check_clip_fields
from emotalker.core.base.config import check_fields, from_dict
from emotalker.core.base.errors import InputError, Interrupted
from emotalker.core.base.fileio import read_json, write_json
from emotalker.core.base.progress import Progress

FORMAT = "emotalker-batch/1"
CLIP_RECORD = ".emotalker-clip.json"
PATH_FIELDS = ("audio", "tracks", "out", "avatar", "camera", "flame_curves")
_ID = re.compile(r"^[A-Za-z0-9._-]+$")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
STOP_GRACE_S = 10.0
"""How long a clip's process gets to exit after SIGTERM (or after reporting) before it is killed."""


@dataclass(frozen=True)
class ClipJob:
    """One clip of a batch."""

    id: str
    spec: ClipSpec
    """What to bake, complete: paths absolute, name and outputs defaulted."""
    fields: dict[str, Any]
    """The clip's fields as the manifest gives them (defaults merged, paths absolute): what the digest is of."""

    @property
    def out(self) -> Path:
        return Path(self.spec.out)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.fields, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class BatchSummary:
    """What a batch did: clips run now, clips skipped as finished, and failures with their reasons."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    retried: dict[str, str] = field(default_factory=dict)
    """Clips whose process (or node) was lost and that ran again, with how ("; " between losses)."""
    losses: dict[str, int] = field(default_factory=dict)
    """How many times each retried clip was lost."""
    interrupted: list[str] = field(default_factory=list)
    """Clips still running when SIGINT or SIGTERM (`interrupted_by`) stopped the batch."""
    interrupted_by: str | None = None
    engine: str = "local"
    frames: int = 0
    """Frames the clips finished in this run hold (written now or by a lost attempt before)."""
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def report(self) -> str:
        """A few lines for the terminal: counts, then one line per failed clip."""
        lines = [f"{len(self.done)} clips baked, {len(self.skipped)} already finished, {len(self.failed)} failed"]
        lines += [f"  RETRIED {clip} {_times(self.losses[clip])}: {reason}" for clip, reason in self.retried.items()]
        lines += [f"  FAILED {clip}: {reason}" for clip, reason in self.failed.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The summary as the JSON file holds it (emotalker-batch-summary/1)."""
        return {"format": "emotalker-batch-summary/1", "engine": self.engine, "exit_code": self.exit_code,
                "done": self.done, "skipped": self.skipped, "failed": self.failed, "retried": self.retried,
                "interrupted": self.interrupted, "interrupted_by": self.interrupted_by, "frames": self.frames,
                "seconds": self.seconds}


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def load_manifest(path: str | os.PathLike) -> list[ClipJob]:
    """Read and validate a batch manifest -> one ClipJob per clip; InputError naming the file and the clip."""
    path = Path(path)
    doc = read_json(path, "batch manifest")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(path, f"format is {got!r}, expected {FORMAT!r}")
    defaults = doc.get("defaults", {})
    clips = doc.get("clips")
    # Checked on their own, so that a wrong default is named as one rather than as the first clip's field.
    check_fields(ClipSpec, defaults, path, "defaults.")
    if not isinstance(clips, list) or not clips:
        raise InputError(path, f"'clips' must be a non-empty list of clip objects, got {type(clips).__name__}")
    jobs, seen = [], set()
    for i, clip in enumerate(clips):
        job = _clip_job(path, i, clip, defaults)
        if job.id in seen:
            raise InputError(path, f"clip {i}: id {job.id!r} appears twice")
        seen.add(job.id)
        jobs.append(job)
    _refuse_shared_outs(path, jobs)
    return jobs


def _clip_job(path: Path, i: int, clip: Any, defaults: dict) -> ClipJob:
    """Clip `i` of the manifest at `path`, its fields type-checked as a ClipSpec."""
    if not isinstance(clip, dict):
        raise InputError(path, f"clips[{i}] must be an object, got {type(clip).__name__}")
    check_fields(ClipSpec, {k: v for k, v in clip.items() if k != "id"}, path, f"clips[{i}].")
    fields = {**defaults, **clip}
    if not isinstance(fields.get("audio"), str):
        raise InputError(path, f"clip {i} ({clip.get('id', 'no id')}) has no 'audio' path")
    clip_id = fields.pop("id", None) or Path(fields["audio"]).stem
    if not isinstance(clip_id, str) or not _ID.match(clip_id):
        raise InputError(path, f"clip {i}: id {clip_id!r} must be letters, digits, '.', '_' or '-'")
    fields.setdefault("out", os.path.join("bake", clip_id))
    spec = from_dict(ClipSpec, fields, path, f"clips[{i}].")
    base = path.parent.resolve()
    for key in PATH_FIELDS:
        if fields.get(key) is not None:
            fields[key] = str(base / os.path.expanduser(fields[key]))
    absolute = {key: fields[key] for key in PATH_FIELDS if fields.get(key) is not None}
    spec = replace(spec, name=spec.name or clip_id, **absolute).with_default_export()
    try:  # the limits too, before any clip runs: a manifest's numbers are untrusted
        check_clip_fields(spec)
    except InputError as exc:
        field_name = (exc.path or "").removeprefix("--").replace("-", "_")
        raise InputError(path, f"clips[{i}].{field_name} ({clip_id}): {exc.problem}") from None
    return ClipJob(clip_id, spec, fields)


def _refuse_shared_outs(path: Path, jobs: list[ClipJob]) -> None:
    """Two clips in one folder would share its resume record (each re-run would bake one over the other)."""
    owner: dict[str, str] = {}
    for job in jobs:
        folder = os.path.realpath(job.out)  # `a/../b`, a symlink and the default bake/<id> compare as folders
        if folder in owner:
            raise InputError(path, f"clips {owner[folder]!r} and {job.id!r} share the output folder {folder}; "
                                   f"give each clip its own 'out'")
        owner[folder] = job.id


def is_finished(job: ClipJob) -> bool:
    """True when the clip's out folder records a successful run with the same fields."""
    record = job.out / CLIP_RECORD
    if not record.is_file():
        return False
    try:
        doc = read_json(record, "clip record")
    except (OSError, InputError):
        return False
    return isinstance(doc, dict) and doc.get("digest") == job.digest


def run_batch(manifest: str | os.PathLike, job_fn: Callable[[ClipJob], Any], *, workers: int | None = 1,
              progress: str = "bar", status_path: str | os.PathLike | None = None, engine: str = "local",
              ray: Any = None, max_retries: int = 1, summary_path: str | os.PathLike | None = None,
              only: int | None = None) -> BatchSummary:
    """Run `job_fn(clip)` for every unfinished clip of the manifest, `workers` at once, on `engine`.

    engine "local": each clip in a (spawned) process of its own on this machine; "ray": each clip a Ray
    task (emotalker.bake.farm, `ray` its RayOptions; `workers` None: as many as the cluster's CPUs hold).
    `job_fn` must be importable by name (a module-level function, or a functools.partial of one). It
    raises on failure (an InputError's message becomes the reason); what it returns (JSON-serialisable)
    is kept in the clip's record. A clip whose process or node is lost runs again, `max_retries` times
    at most; SIGINT and SIGTERM stop every clip and raise `Interrupted` (see the module's docstring).
    The summary is also written as JSON to `summary_path` (default `<manifest stem>.summary.json`).
    `only`: run just the clip at this (0-based) index of the manifest, the whole manifest still checked
    (a farm's task per clip: docs/farm.md); its status and summary files then carry the clip's id.
    """
    if workers is not None and workers < 1:
        raise InputError("--workers", f"must be at least 1, got {workers}")
    if max_retries < 0:
        raise InputError("--max-retries", f"must be 0 or more, got {max_retries}")
    manifest = Path(manifest)
    jobs = load_manifest(manifest)
    stem = manifest.stem
    if only is not None:
        if not 0 <= only < len(jobs):
            raise InputError("--clip-index", f"must be 0..{len(jobs) - 1} ({manifest} has {len(jobs)} clips), got {only}")
        jobs = [jobs[only]]
        stem = f"{stem}.{jobs[0].id}"  # tasks of one manifest, run at once, each write their own files
    status_path = Path(status_path) if status_path else manifest.with_name(f"{stem}.status.json")
    summary_path = Path(summary_path) if summary_path else manifest.with_name(f"{stem}.summary.json")
    summary = BatchSummary(engine=engine)
    todo: deque[ClipJob] = deque()
    for job in jobs:
        if is_finished(job):
            summary.skipped.append(job.id)
        else:
            todo.append(job)
    started = time.monotonic()
    try:
        with _engine(engine, job_fn, workers, ray) as clips, _StopSignals() as signals, \
                Progress("bake-batch", total=len(jobs), mode=_bar_mode(progress), initial=len(summary.skipped)) as bar:
            limit = workers or clips.capacity
            while todo or clips.running:
                while todo and len(clips.running) < limit:
                    clips.start(todo.popleft())
                _write_status(status_path, jobs, summary, clips.running_ids)
                for job, outcome in clips.wait(*signals.fds):  # clips that ended are recorded even when
                    if _settle(job, outcome, summary, todo, max_retries):  # a signal came meanwhile
                        bar.update(1, frames=summary.frames)
                    _clip_line(progress, job, outcome, summary, len(jobs))
                if signals.caught:
                    _interrupt(signals.caught[0], clips, summary, status_path, jobs)
    finally:
        summary.seconds = round(time.monotonic() - started, 3)
        _write_summary(summary_path, summary)
    _write_status(status_path, jobs, summary)
    return summary


def _engine(engine: str, job_fn: Callable[[ClipJob], Any], workers: int | None, ray: Any):
    """The clips' runner: local processes, or Ray tasks (imported only then: ray is the `farm` extra)."""
    if engine == "local":
        workers = workers or 1
        return _ClipProcesses(job_fn, max(1, (os.cpu_count() or 1) // workers), capacity=workers)
    if engine == "ray":
        from emotalker.bake.farm import RayOptions, RayTasks

        return RayTasks(job_fn, ray or RayOptions())
    raise InputError("--engine", f"must be local or ray, got {engine!r}")


def _settle(job: ClipJob, outcome: tuple[str, Any], summary: BatchSummary, todo: deque[ClipJob],
            max_retries: int = 1) -> bool:
    """Record a clip's outcome ("done", "failed" or "lost"); False when it goes back in the queue instead."""
    kind, detail = outcome
    losses = summary.losses.get(job.id, 0)
    if kind == "lost" and losses < max_retries:
        summary.losses[job.id] = losses + 1
        summary.retried[job.id] = f"{summary.retried[job.id]}; {detail}" if losses else detail
        todo.append(job)  # at the back: the clips waiting already go first
        return False
    if kind == "done":
        write_json(job.out / CLIP_RECORD, {"format": "emotalker-clip/1", "id": job.id, "digest": job.digest,
                                          "result": detail})
        summary.done.append(job.id)
        summary.frames += _frames(detail)
    elif kind == "failed" or not losses:
        summary.failed[job.id] = detail
    else:
        summary.failed[job.id] = f"{detail}, on its retry too" if losses == 1 else f"{detail}, on all {losses} retries"
    return True


def _frames(result: Any) -> int:
    """The frames a clip's job reports it holds (a bake's written + skipped; 0 for a job that says nothing)."""
    if not isinstance(result, dict):
        return 0
    return sum(int(result.get(key) or 0) for key in ("written", "skipped"))


def _bar_mode(progress: str) -> str:
    """The batch's bar: clips (and frames) on a terminal; with `--progress json`, per-clip lines instead."""
    return "none" if progress == "json" else progress


def _clip_line(progress: str, job: ClipJob, outcome: tuple[str, Any], summary: BatchSummary, total: int) -> None:
    """`--progress json`: one line per clip that ends (done, failed) or is lost and queued again (retried)."""
    if progress != "json":
        return
    kind, detail = outcome
    state = ("done" if kind == "done" else "failed" if job.id in summary.failed else "retried")
    step = len(summary.done) + len(summary.skipped) + len(summary.failed)
    line = {"stage": "bake-batch", "clip": job.id, "state": state, "step": step, "total": total}
    line.update({"frames": _frames(detail)} if kind == "done" else {"reason": summary.failed.get(job.id, detail)})
    print(json.dumps(line), flush=True)


def _interrupt(signum: int, clips: Any, summary: BatchSummary, status_path: Path, jobs: list[ClipJob]) -> None:
    """Stop every clip's process (or Ray task), record which were stopped, and raise Interrupted."""
    summary.interrupted = clips.stop()
    summary.interrupted_by = _signal_name(signum)
    _write_status(status_path, jobs, summary)
    stopped = ", ".join(summary.interrupted) or "none"
    raise Interrupted(signum, f"interrupted by {summary.interrupted_by}: stopped clips {stopped}; finished clips and "
                              f"frames are kept and a re-run resumes (status: {status_path})")


class _StopSignals:
    """SIGINT and SIGTERM noted instead of acted on at once, and made to wake the batch's wait (`fds`).

    The batch then stops its clips' processes at one known point of its loop, rather than an exception
    raised anywhere (say, between starting a process and recording it) leaving one behind. Only the main
    thread can handle signals: in another thread this changes nothing and `fds` is empty.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> _StopSignals:
        self.caught: list[int] = []
        self.fds: tuple[int, ...] = ()
        if threading.current_thread() is not threading.main_thread():
            return self
        self._pipe = os.pipe()
        os.set_blocking(self._pipe[1], False)  # set_wakeup_fd's requirement
        self._old_wakeup = signal.set_wakeup_fd(self._pipe[1])
        self._old = {signum: signal.signal(signum, self._note) for signum in self.SIGNALS}
        self.fds = (self._pipe[0],)
        return self

    def _note(self, signum: int, frame: Any) -> None:
        self.caught.append(signum)

    def __exit__(self, *exc: Any) -> None:
        if not self.fds:
            return
        for signum, handler in self._old.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        signal.set_wakeup_fd(self._old_wakeup)
        for fd in self._pipe:
            os.close(fd)


class _ClipProcesses:
    """The clips' processes, one per clip, each with a pipe that carries its one result back.

    One process per clip rather than a pool of long-lived workers, because it is the simplest to reason
    about: a process that dies (kill -9, the OOM killer, a crash in native code) takes exactly one known
    clip with it and nothing needs rebuilding, whereas a broken ProcessPoolExecutor fails every clip it
    holds and cannot say which one was lost; stopping the batch is stopping the processes listed here;
    and no memory is carried from one clip to the next. The price is one interpreter start and torch
    import per clip (seconds), small beside a clip's bake.
    """

    def __init__(self, job_fn: Callable[[ClipJob], Any], threads: int, capacity: int = 1):
        self.capacity = capacity
        """How many clips run at once."""
        self._context = multiprocessing.get_context("spawn")  # no fork: torch and threads do not survive it
        self._job_fn = job_fn
        # Share the cores between the clips instead of each one taking them all (read at import in the child).
        self._environment = {var: str(threads) for var in THREAD_VARS}
        self.running: dict[Connection, tuple[ClipJob, BaseProcess]] = {}

    def __enter__(self) -> _ClipProcesses:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()  # whatever ended the batch, no clip's process outlives it

    @property
    def running_ids(self) -> list[str]:
        return [job.id for job, _ in self.running.values()]

    def start(self, job: ClipJob) -> None:
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(target=_clip_process, args=(self._job_fn, job, writer),
                                        name=f"bake-batch {job.id}")
        with _environment_added(self._environment), _sigint_blocked():
            process.start()
        writer.close()  # the child's copy is then the only one: the pipe reads as ended when the child ends
        self.running[reader] = (job, process)

    def wait(self, *fds: int) -> list[tuple[ClipJob, tuple[str, Any]]]:
        """Block until a clip's process reports or ends, or one of `fds` is readable -> the clips that ended."""
        ready = connection.wait([*self.running, *fds])
        finished = []
        for reader in ready:
            if reader in self.running:
                job, process = self.running.pop(reader)
                finished.append((job, _outcome(reader, process)))
        return finished

    def stop(self) -> list[str]:
        """End every running clip's process (SIGTERM; SIGKILL after a grace period) -> the clips stopped."""
        stopped, running = self.running_ids, list(self.running.items())
        self.running.clear()
        for _, (_, process) in running:
            process.terminate()
        for reader, (_, process) in running:
            _end(process)
            reader.close()
        return stopped


def _outcome(reader: Connection, process: BaseProcess) -> tuple[str, Any]:
    """("done", result), ("failed", reason) or ("lost", why) for a clip process whose pipe became readable."""
    try:
        ok, detail = json.loads(reader.recv_bytes())
    except (EOFError, OSError):  # the process ended without a (whole) result
        ok = detail = None
    _end(process)
    reader.close()
    if ok is None:
        code = process.exitcode
        why = f"killed by {_signal_name(-code)}" if code < 0 else f"exit status {code} without a result"
        return "lost", f"worker process lost ({why})"
    return ("done" if ok else "failed"), detail


def _end(process: BaseProcess) -> None:
    """Wait for a process that was told to end or has reported (it only has to exit), killing it after STOP_GRACE_S."""
    process.join(STOP_GRACE_S)
    if process.exitcode is None:
        process.kill()
        process.join()


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@contextlib.contextmanager
def _environment_added(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ meanwhile (a process started now inherits them), leaving variables already set."""
    added = {name: value for name, value in values.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked meanwhile: a process started now starts with it blocked (the mask is inherited),
    until it ignores it; one that arrives meanwhile is delivered here afterwards."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _clip_process(job_fn: Callable[[ClipJob], Any], job: ClipJob, result: Connection) -> None:
    """A clip's process: run the clip, send [ok, result or reason] as JSON, exit."""
    # Ctrl-C in a terminal reaches the whole process group; the batch decides what to stop (with SIGTERM),
    # so a clip ignores it instead of dying with a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    result.send_bytes(json.dumps(_run_clip(job_fn, job)).encode())
    result.close()


def _run_clip(job_fn: Callable[[ClipJob], Any], job: ClipJob) -> tuple[bool, Any]:
    """In a clip's process: run it; (True, result) or (False, reason). Never raises an Exception."""
    try:
        result = job_fn(job)
        json.dumps(result)  # the record must be able to hold it
        return True, result
    except InputError as exc:
        return False, str(exc)
    except Exception as exc:  # a bug or an environment problem: keep the reason and where it came from
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return False, f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"


def _write_summary(path: Path, summary: BatchSummary) -> None:
    try:
        write_json(path, summary.to_dict())
    except OSError:
        pass  # as the status file: the summary is still returned and printed


def _write_status(path: Path, jobs: list[ClipJob], summary: BatchSummary, running: Iterable[str] = ()) -> None:
    state = {job.id: "pending" for job in jobs}
    state.update({c: "running" for c in running})
    state.update({c: "done" for c in summary.done})
    state.update({c: "skipped (finished earlier)" for c in summary.skipped})
    state.update({c: "failed" for c in summary.failed})
    state.update({c: "interrupted" for c in summary.interrupted})
    status = {"format": "emotalker-batch-status/1", "clips": state, "failed": summary.failed,
              "retried": summary.retried}
    if summary.interrupted_by:
        status["interrupted_by"] = summary.interrupted_by
    try:
        write_json(path, status)
    except OSError:
        pass  # a read-only manifest folder must not fail the batch; the summary is still returned
