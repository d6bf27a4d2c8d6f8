"""What one input may ask for, checked before anything is allocated (docs/architecture.md, "Limits").

A bake allocates in proportion to its frame count (the tracks' per-frame values,
A2E's curves, Stage 2's audio features: about 2 KB a frame) and a render in
proportion to its pixels, so a few bytes of input (a tracks file's fps, a WAV
header's sample rate, --resolution) must not be able to ask for gigabytes. Each
limit is checked where the value is first read, with one InputError naming the
file or option.
"""

from __future__ import annotations

import math
import os
from typing import Any

from emotalker.core.base.errors import InputError

MIN_FPS = 1.0
MAX_FPS = 240.0
"""Frame rates a bake accepts: every real video rate (23.976 .. 240) and slow previews down to 1 fps."""
MAX_FRAMES = 100_000
"""Frames one clip may have by default (its whole audio at the bake's fps; an hour at 25 fps is 90,000):
Stage 2's audio features for them take about 0.13 GB. `--max-frames` raises it."""
MAX_AUDIO_SECONDS = 3600.0
"""Audio one clip may last by default, read from the file's header before decoding (an hour of 16 kHz
float32 samples is 230 MB). `--max-seconds` raises it."""
MAX_IMAGE_SIDE = 16384
"""Largest width or height of a rendered frame (the camera file's limit too)."""
MAX_CHUNK = 256
"""Most frames evaluated at once (--chunk): each holds every Gaussian of a frame."""
MAX_THREADS = 1024
"""Most CPU threads a run may ask for (--threads)."""


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_fps(fps: Any, source: str | os.PathLike | None) -> float:
    """`fps` as a float, or InputError naming `source` when it is not a number in MIN_FPS..MAX_FPS."""
    if not _is_number(fps) or not MIN_FPS <= fps <= MAX_FPS:
        raise InputError(source, f"fps must be a positive number in {MIN_FPS:g}..{MAX_FPS:g}, got {fps!r}")
    return float(fps)


def check_range(value: Any, low: int, high: int, source: str | os.PathLike | None, what: str) -> int:
    """An integer option `value` in low..high, or InputError naming `source` and `what`."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InputError(source, f"{what} must be an integer in {low}..{high}, got {value!r}")
    return value


def check_number(value: Any, low: float, high: float, source: str | os.PathLike | None, what: str) -> float:
    """A finite number `value` in low..high as a float, or InputError naming `source` and `what`."""
    if not _is_number(value) or not low <= value <= high:
        raise InputError(source, f"{what} must be a number in {low:g}..{high:g}, got {value!r}")
    return float(value)


def check_audio_seconds(seconds: float, max_seconds: float, source: str | os.PathLike) -> None:
    """InputError naming the audio file when it lasts longer than `max_seconds`."""
    if seconds > max_seconds:
        raise InputError(source, f"audio lasts {seconds:.0f} s by its header, more than the limit of {max_seconds:g} s "
                                 f"(--max-seconds raises it)")


def check_frame_count(n_frames: int, max_frames: int, source: str | os.PathLike, what: str) -> None:
    """InputError naming `source` when `what` (e.g. "12.0 s of audio at 25 fps") is more than `max_frames` frames."""
    if n_frames > max_frames:
        raise InputError(source, f"{what} is {n_frames} frames, more than the limit of {max_frames} "
                                 f"(--max-frames raises it)")

MAX_JSON_BYTES = 64 << 20
"""Largest JSON file read (checked with stat, before reading): a tracks file keyed on every frame of
MAX_FRAMES frames takes about 30 MB. Parsed, JSON takes up to about ten times its size in memory."""
MAX_JSON_DEPTH = 100
"""Deepest nesting of arrays and objects in any JSON we read (ours nest 6 deep at most); deeper input
would make the parser recurse until Python gives up."""
MAX_REQUEST_BYTES = 1 << 20
"""Longest worker request line, in bytes (a bake request is under 2 KB); read bounded, so a longer line
never sits in memory whole."""
MAX_ARRAY_BYTES = 1 << 30
"""Most bytes the arrays of one .npz file may declare (the sum of shape x item size over its members),
and the most one FLAME pickle may ask to allocate beyond its own bytes (a sparse matrix made dense, an
array reconstructed by shape). A FLAME model takes about 60 MB, FLAME curves of MAX_FRAMES frames
about 50 MB."""
