"""Many clips in parallel worker processes: the machinery behind `emotalker bake-batch`.

Manifest (`MANIFEST.json`):

    {"format": "emotalker-batch/1",
     "defaults": {"avatar": "avatar/", "ply": true, "fps": 25},
     "clips": [{"id": "line_001", "audio": "audio/line_001.wav", "tracks": "tracks/line_001.json"},
               {"id": "line_002", "audio": "audio/line_002.wav", "emotion": "happy", "intensity": 2.0,
                "out": "/renders/line_002"}]}

- `clips` (required): one object per clip: an `id` and the fields of a
  `ClipSpec` (emotalker/bake/clip.py: what a clip is), read with their types
  checked, so an unknown or mistyped field is an error naming the field and the
  manifest. `audio` and `avatar` are required; `id` defaults to the audio file's
  stem and must be unique (letters, digits, `._-`).
- `defaults` (optional): fields every clip gets unless it sets them itself.
- `out` defaults to `bake/<id>` beside the manifest, `name` to the id, and the
  outputs to the PLY sequence when a clip asks for none.
- Relative paths in the fields `audio tracks out avatar camera flame_curves`
  are taken relative to the manifest's folder.
- How the clips run (device, threads, ...: `RunOptions`) is not the manifest's
  but the command line's, one for the whole batch.

Resuming: when a clip's job succeeds, `<out>/.emotalker-clip.json` records a
digest of the clip's fields as the manifest gives them (paths resolved); a re-run skips clips whose record matches
and runs the rest (a clip's own bake resumes its frames). A summary of every
clip's state and each failure's reason is written beside the manifest as
`<manifest stem>.status.json` and returned.
"""

from __future__ import annotations

import concurrent.futures as cf
from concurrent.futures.process import BrokenProcessPool
import hashlib
import json
import multiprocessing
import os
import re
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from emotalker.bake.clip import ClipSpec, check_clip_fields
from emotalker.core.base.config import from_dict
from emotalker.core.base.errors import InputError
from emotalker.core.base.fileio import read_json, write_json
from emotalker.core.base.progress import Progress

FORMAT = "emotalker-batch/1"
CLIP_RECORD = ".emotalker-clip.json"
PATH_FIELDS = ("audio", "tracks", "out", "avatar", "camera", "flame_curves")
_ID = re.compile(r"^[A-Za-z0-9._-]+$")


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

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def report(self) -> str:
        """A few lines for the terminal: counts, then one line per failed clip."""
        lines = [f"{len(self.done)} clips baked, {len(self.skipped)} already finished, {len(self.failed)} failed"]
        lines += [f"  FAILED {clip}: {reason}" for clip, reason in self.failed.items()]
        return "\n".join(lines)


def load_manifest(path: str | os.PathLike) -> list[ClipJob]:
    """Read and validate a batch manifest -> one ClipJob per clip; InputError naming the file and the clip."""
    path = Path(path)
    doc = read_json(path, "batch manifest")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(path, f"format is {got!r}, expected {FORMAT!r}")
    defaults = doc.get("defaults", {})
    clips = doc.get("clips")
    if not isinstance(defaults, dict):
        raise InputError(path, "'defaults' must be an object")
    if not isinstance(clips, list) or not clips:
        raise InputError(path, "'clips' must be a non-empty list of clip objects")
    known = sorted(ClipSpec.__dataclass_fields__)
    unknown = sorted(set(defaults) - set(known))
    if unknown:  # named here: checked with each clip, it would be named as the first clip's
        raise InputError(path, f"unknown field defaults.{unknown[0]} (known: {', '.join(known)})")
    jobs, seen = [], set()
    for i, clip in enumerate(clips):
        job = _clip_job(path, i, clip, defaults)
        if job.id in seen:
            raise InputError(path, f"clip {i}: id {job.id!r} appears twice")
        seen.add(job.id)
        jobs.append(job)
    return jobs


def _clip_job(path: Path, i: int, clip: Any, defaults: dict) -> ClipJob:
    """Clip `i` of the manifest at `path`, its fields type-checked as a ClipSpec."""
    if not isinstance(clip, dict):
        raise InputError(path, f"clip {i} must be an object")
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


def run_batch(manifest: str | os.PathLike, job_fn: Callable[[ClipJob], Any], *, workers: int = 1,
              progress: str = "bar", status_path: str | os.PathLike | None = None) -> BatchSummary:
    """Run `job_fn(clip)` for every unfinished clip of the manifest in `workers` processes.

    `job_fn` must be importable by name (a module-level function) since workers
    are spawned. It raises on failure (an InputError's message becomes the
    reason); what it returns (JSON-serialisable) is kept in the clip's record.
    """
    if workers < 1:
        raise InputError("--workers", f"must be at least 1, got {workers}")
    manifest = Path(manifest)
    jobs = load_manifest(manifest)
    status_path = Path(status_path) if status_path else manifest.with_name(f"{manifest.stem}.status.json")
    summary = BatchSummary()
    todo = []
    for job in jobs:
        if is_finished(job):
            summary.skipped.append(job.id)
        else:
            todo.append(job)
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # no fork: torch and threads do not survive it
    with Progress("bake-batch", total=len(jobs), mode=progress, initial=len(summary.skipped)) as bar, \
            cf.ProcessPoolExecutor(max_workers=min(workers, max(1, len(todo))), mp_context=context,
                                   initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(_run_clip, job_fn, job): job for job in todo}
        try:
            for future in cf.as_completed(futures):
                job = futures[future]
                try:
                    ok, detail = future.result()
                except BrokenProcessPool as exc:
                    ok, detail = False, f"worker process died ({exc})"
                if ok:
                    write_json(job.out / CLIP_RECORD, {"format": "emotalker-clip/1", "id": job.id,
                                                      "digest": job.digest, "result": detail})
                    summary.done.append(job.id)
                else:
                    summary.failed[job.id] = detail
                bar.update(1)
                _write_status(status_path, jobs, summary)
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            _write_status(status_path, jobs, summary)
            raise
    _write_status(status_path, jobs, summary)
    return summary


def _init_worker(threads: int) -> None:
    # Share the cores between workers instead of each one taking them all.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))


def _run_clip(job_fn: Callable[[ClipJob], Any], job: ClipJob) -> tuple[bool, Any]:
    """In a worker: run one clip; (True, result) or (False, reason). Never raises an Exception."""
    try:
        result = job_fn(job)
        json.dumps(result)  # the record must be able to hold it
        return True, result
    except InputError as exc:
        return False, str(exc)
    except Exception as exc:  # a bug or an environment problem: keep the reason and where it came from
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return False, f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"


def _write_status(path: Path, jobs: list[ClipJob], summary: BatchSummary) -> None:
    state = {job.id: "pending" for job in jobs}
    state.update({c: "done" for c in summary.done})
    state.update({c: "skipped (finished earlier)" for c in summary.skipped})
    state.update({c: "failed" for c in summary.failed})
    try:
        write_json(path, {"format": "emotalker-batch-status/1", "clips": state, "failed": summary.failed})
    except OSError:
        pass  # a read-only manifest folder must not fail the batch; the summary is still returned
