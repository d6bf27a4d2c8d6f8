"""Adding one clip to a dataset folder, shared by every writer of real clips (`import-tracking`, `track`).

A clip is built in a hidden partial folder beside its final place and swapped in
whole, so an interrupted run never leaves half a clip; `open_target` checks that
the new clip fits the dataset already there (frame size, fps, identity).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from emotalker.core.base.emotions import check_intensity, emotion_index
from emotalker.core.base.errors import InputError
from emotalker.core.datasets.dataset import _CLIP_ID_RE, SPLITS, ClipInfo, Dataset
from emotalker.core.rig.flame import FlameModel


def check_labels(emotion: str, intensity: float, split: str) -> None:
    """A clip's emotion, intensity and split, checked before any file is read."""
    emotion_index(emotion)
    check_intensity(intensity)
    if split not in SPLITS:
        raise InputError(None, f"split must be train or test, got {split!r}")


def check_clip_id(clip_id: str) -> str:
    """A clip id as the format allows it (letters, digits, _ . -; so it never leaves the clips folder)."""
    if not _CLIP_ID_RE.match(clip_id):
        raise InputError(None, f"clip id {clip_id!r} may hold only letters, digits, _ . - (pass --clip-id)")
    return clip_id


def partial_dir(out: Path, clip_id: str) -> Path:
    """Where a clip is built before it is moved into place, so an interrupted run never leaves half a clip."""
    return out / "clips" / f".{clip_id}.partial"


def swap_in_clip(out: Path, clip_id: str) -> None:
    """Replace the clip's folder with its finished partial folder."""
    clip_dir = out / "clips" / clip_id
    shutil.rmtree(clip_dir, ignore_errors=True)
    os.replace(partial_dir(out, clip_id), clip_dir)


def open_target(out: Path, model: FlameModel | None, width: int, height: int, fps: float) -> list[ClipInfo]:
    """Clips already in `out`, after checking the new clip fits there (`model`: its rig, needed only when `out`
    holds a dataset)."""
    if not (out / "dataset.json").exists():
        if out.exists() and any(p for p in out.iterdir() if p.name != "clips"):
            raise InputError(out, "folder exists, is not empty and holds no dataset.json")
        return []
    ds = Dataset.open(out)
    if (ds.width, ds.height) != (width, height) or abs(ds.fps - fps) > 1e-6:
        raise InputError(out / "dataset.json", f"dataset is {ds.width}x{ds.height} at {ds.fps} fps; the clip is {width}x{height} at {fps} fps")
    have = ds.flame_model()
    if have.v_template.shape != model.v_template.shape or np.abs(have.v_template - model.v_template).max() > 1e-5:
        raise InputError(out / "flame_model.npz", "the dataset's identity differs from this clip's (shape or static offset)")
    return list(ds.clips)


def write_audio(src: Path, dst: Path, rate: int = 16000) -> None:
    """Copy the clip's audio as 16 kHz mono PCM WAV."""
    import soundfile

    from emotalker.core.audio.waveform import resample

    try:
        data, sr = soundfile.read(str(src), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, soundfile.LibsndfileError) as exc:
        raise InputError(src, f"not a readable audio file ({exc})") from None
    soundfile.write(str(dst), resample(data.mean(1), sr, rate), rate, subtype="PCM_16")
