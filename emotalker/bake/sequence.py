"""The resumable frame loop shared by every per-frame exporter (PLY, PNG, ...).

`run_sequence(frames, produce, sinks, out_dir=..., fingerprint=...)` asks
`produce(frame)` for each frame that is not complete yet and hands the result
to every sink whose file for that frame is missing. Nothing is kept between
frames, so memory does not grow with the clip.

How a re-run knows what is done:
- A frame file under its final name is complete: every sink writes to a
  temporary file and moves it into place (atomic_path), so a crash, a kill or
  Ctrl-C leaves either the whole file or none. A frame is complete when every
  sink's file exists; a frame with some files missing is produced again and
  only the missing files are written.
- The run file `<out_dir>/.emotalker-run.json` records a digest of the inputs
  (`fingerprint`: whatever determines the frames' content, e.g. file hashes and
  options; not the frame range, so a longer range reuses the frames it has).
  A re-run whose digest differs, or a folder holding frame files but no run
  file, is refused with an InputError saying so, unless `overwrite=True`,
  which deletes those frame files and starts over.
- A sink's frame files are the names its pattern makes and nothing else:
  `take_{frame:06d}.ply` matches `take_000001.ply`, never a user's
  `take_final.ply` nor the frames of a bake named `take_b` in the same folder
  (a name's frame number is digits only, so no other name's pattern can match
  them). Neither a refusal nor --overwrite ever counts or deletes other files.
- A lock on `<out_dir>/.emotalker-run.lock` keeps two bakes out of one folder;
  the operating system drops it when a process dies, so no stale lock remains.
  Under the lock, temporary files a killed run left behind are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from emotalker.core.base.errors import InputError
from emotalker.core.base.fileio import atomic_path, make_output_folder, read_json, write_json
from emotalker.core.base.progress import Progress

RUN_FORMAT = "emotalker-run/1"
RUN_FILE = ".emotalker-run.json"
LOCK_FILE = ".emotalker-run.lock"


@dataclass(frozen=True)
class FrameSink:
    """One per-frame output: `<folder>/<pattern with the frame number>`, e.g. "head_{frame:06d}.ply".

    write(item, tmp_path) writes the item `produce` returned for that frame to a
    temporary path (moved into place afterwards).
    """

    name: str
    folder: Path
    pattern: str
    """The frame file's name, `{frame:06d}` standing for the frame number (six digits or more)."""
    write: Callable[[Any, Path], None]

    def path(self, frame: int) -> Path:
        """The frame's final file."""
        return Path(self.folder) / self.pattern.format(frame=frame)

    def frame_files(self) -> list[Path]:
        """Every file in the folder this sink's pattern makes for some frame, and nothing else."""
        return self._matching(self._name_regex())

    def temporaries(self) -> list[Path]:
        """The temporary files of this sink's frames (atomic_path's `.<stem>.<random><suffix>.part`)."""
        stem, suffix = self._name_regex().rsplit(r"\.", 1)
        return self._matching(rf"\.{stem}\.[A-Za-z0-9_]+\.{suffix}\.part")

    def _name_regex(self) -> str:
        before, field, after = self.pattern.partition("{frame:06d}")
        if not field or "." not in after:
            raise ValueError(f"frame pattern {self.pattern!r} needs {{frame:06d}} followed by a file suffix")
        return re.escape(before) + r"\d{6,}" + re.escape(after)

    def _matching(self, regex: str) -> list[Path]:
        compiled = re.compile(regex)
        if not Path(self.folder).is_dir():  # a sink's own folder (the USD's samples) is made by its first frame
            return []
        return sorted(p for p in Path(self.folder).iterdir() if compiled.fullmatch(p.name))


@dataclass(frozen=True)
class SequenceResult:
    """What a run did: how many frames it produced and how many it found complete."""

    written: int
    skipped: int


def inputs_digest(fingerprint: dict[str, Any]) -> str:
    """sha256 of the fingerprint's canonical JSON."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's content, read in chunks (for fingerprints); InputError when missing."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def run_sequence(frames: Sequence[int], produce: Callable[[int], Any], sinks: Sequence[FrameSink], *,
                 out_dir: str | os.PathLike, fingerprint: dict[str, Any], overwrite: bool = False,
                 progress: str = "bar", stage: str = "bake",
                 progress_sink: Callable[[dict], None] | None = None) -> SequenceResult:
    """Write every sink's file for every frame in `frames`, resuming where a previous run stopped.

    `produce(frame)` is called only for frames with a missing file. Errors it
    raises (an InputError for bad input, KeyboardInterrupt) stop the run with all
    earlier frames intact and no partial file under a final name. `progress_sink`
    receives the JSON progress events instead of stdout (the worker's, which
    also raises when the job is cancelled: each frame boundary is a safe stop).
    """
    if not sinks:
        raise ValueError("run_sequence needs at least one sink")
    out_dir = make_output_folder(out_dir)
    with _folder_lock(out_dir):
        _remove_stale_temporaries(out_dir, sinks)
        _check_or_start_run(out_dir, sinks, fingerprint, overwrite)
        n_done = sum(all(s.path(f).exists() for s in sinks) for f in frames)
        written = 0
        with Progress(stage, total=len(frames), mode=progress, initial=n_done, sink=progress_sink) as bar:
            for frame in frames:
                missing = [s for s in sinks if not s.path(frame).exists()]
                if not missing:
                    continue
                item = produce(frame)
                for sink in missing:
                    with atomic_path(sink.path(frame)) as tmp:
                        sink.write(item, tmp)
                del item  # streaming: nothing of this frame outlives its iteration
                written += 1
                bar.update(1)
    return SequenceResult(written, n_done)


def _check_or_start_run(out_dir: Path, sinks: Sequence[FrameSink], fingerprint: dict[str, Any], overwrite: bool) -> None:
    run_path = out_dir / RUN_FILE
    digest = inputs_digest(fingerprint)
    existing = [p for s in sinks for p in s.frame_files()]
    if run_path.exists():
        previous = read_json(run_path, "bake run file")
        if previous.get("digest") == digest and not overwrite:
            return
        if not overwrite and existing:
            changed = sorted(k for k in set(fingerprint) | set(previous.get("fingerprint", {}))
                             if json.dumps(fingerprint.get(k), sort_keys=True, default=str)
                             != json.dumps(previous.get("fingerprint", {}).get(k), sort_keys=True, default=str))
            raise InputError(out_dir, f"holds {len(existing)} frame files baked from different inputs "
                                      f"(changed: {', '.join(changed) or 'unknown'}); pass --overwrite to start over "
                                      f"or bake into another folder")
    elif existing and not overwrite:
        raise InputError(out_dir, f"holds {len(existing)} frame files (e.g. {existing[0].name}) that no bake run "
                                  f"recorded; pass --overwrite to replace them or bake into another folder")
    if overwrite:
        for path in existing:
            path.unlink()
    write_json(run_path, {"format": RUN_FORMAT, "digest": digest, "fingerprint": json.loads(
        json.dumps(fingerprint, sort_keys=True, default=str))})


def _remove_stale_temporaries(out_dir: Path, sinks: Sequence[FrameSink]) -> None:
    for sink in sinks:
        for path in sink.temporaries():
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _folder_lock(out_dir: Path) -> Iterator[None]:
    """An exclusive advisory lock on the folder (POSIX flock; no lock where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: run without the guard against two bakes in one folder
        yield
        return
    with open(out_dir / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(out_dir, "another bake is writing into this folder; wait for it or choose another --out") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
