"""Dialogue audio in: load any file soundfile reads, mix to mono, resample to 16 kHz, validate.

Every model in EmoTalker sees audio as float32 mono samples at `SAMPLE_RATE`.
Bad audio (unreadable, empty, silent throughout, NaN or infinite samples) is
refused with one InputError naming the file, because a silent or corrupt clip
would otherwise bake into a face that never moves without saying why.
"""

from __future__ import annotations

import os
from math import gcd
from pathlib import Path

import numpy as np

from emotalker.core.base.errors import InputError
from emotalker.core.base.limits import MAX_AUDIO_SECONDS, MAX_FRAMES, check_audio_seconds, check_frame_count

SAMPLE_RATE = 16000
# Peak below -80 dBFS counts as silence: quieter than any usable recording's noise floor.
SILENCE_PEAK = 1e-4


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels: samples [N] or [N, C] -> [N] float32."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise ValueError(f"audio must be [N] or [N, C], got shape {list(samples.shape)}")
    return samples.mean(axis=1, dtype=np.float64).astype(np.float32)


def resample(samples: np.ndarray, rate_in: int, rate_out: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling of mono samples [N] from `rate_in` to `rate_out` Hz -> [M] float32.

    Uses a polyphase filter (scipy.signal.resample_poly) with the exact rational
    ratio, so 44.1 kHz -> 16 kHz is 160/441 and the length is ceil(N * out / in).
    """
    samples = np.asarray(samples, dtype=np.float32)
    rate_in, rate_out = int(rate_in), int(rate_out)
    if rate_in <= 0 or rate_out <= 0:
        raise ValueError(f"sample rates must be positive, got {rate_in} -> {rate_out}")
    if rate_in == rate_out:
        return samples.copy()
    from scipy.signal import resample_poly

    g = gcd(rate_in, rate_out)
    return resample_poly(samples, rate_out // g, rate_in // g).astype(np.float32)


def validate_audio(samples: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray:
    """Return `samples` [N] unchanged, or raise one InputError for empty, non-finite or silent audio."""
    if samples.size == 0:
        raise InputError(path, "audio is empty (0 samples)")
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int((~finite).sum())
        raise InputError(path, f"audio holds {bad} NaN or infinite samples of {samples.size}")
    peak = float(np.abs(samples).max())
    if peak < SILENCE_PEAK:
        raise InputError(path, f"audio is silent throughout (peak {peak:.2g}, below {SILENCE_PEAK:g}); nothing to animate")
    return samples


def audio_seconds(path: str | os.PathLike) -> float:
    """How long the audio file lasts by its header, without decoding it; InputError naming the file when
    it is missing or unreadable."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "audio file not found")
    try:
        info = sf.info(str(path))
    except (RuntimeError, ValueError, OSError) as exc:  # soundfile's LibsndfileError is a RuntimeError
        raise InputError(path, f"not a readable audio file ({exc})") from None
    if info.samplerate <= 0:
        raise InputError(path, f"audio header gives a sample rate of {info.samplerate} Hz")
    return info.frames / info.samplerate


def check_audio_length(path: str | os.PathLike, fps: float, max_seconds: float = MAX_AUDIO_SECONDS,
                       max_frames: int = MAX_FRAMES) -> None:
    """Refuse audio longer than `max_seconds`, or more than `max_frames` frames at `fps`, by its header:
    before a sample is decoded."""
    seconds = audio_seconds(path)
    check_audio_seconds(seconds, max_seconds, path)
    check_frame_count(int(round(seconds * fps)), max_frames, path, f"{seconds:.1f} s of audio at {fps:g} fps")


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE,
               max_seconds: float = MAX_AUDIO_SECONDS) -> np.ndarray:
    """Read any file soundfile reads (wav, flac, ogg, ...), any rate and channel count.

    Returns mono float32 samples [N] at `sample_rate`; InputError naming the file
    when it is missing, unreadable, longer than `max_seconds` (by its header,
    before anything is decoded: a header claiming 1 Hz makes a small file hours
    long), empty, silent or holds NaN/inf.
    """
    import soundfile as sf

    path = Path(path)
    check_audio_seconds(audio_seconds(path), max_seconds, path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, ValueError, OSError) as exc:  # soundfile's LibsndfileError is a RuntimeError
        raise InputError(path, f"not a readable audio file ({exc})") from None
    # Validate before resampling: the filter would smear one NaN over the whole clip.
    mono = validate_audio(to_mono(data), path)
    return validate_audio(resample(mono, rate, sample_rate), path)


def duration_frames(n_samples: int, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Number of video frames that cover `n_samples` of audio at `fps` (at least 1)."""
    return max(1, int(round(n_samples / sample_rate * fps)))
