"""The emotion vocabulary: the categories, the neutral one, the intensity range, and the one way
to name, parse, normalise and check emotion weights and intensities.

`EMOTIONS` is the one-hot order of every saved model (A2E and Stage 2 files store it and refuse
another), so never reorder it. The Blender add-on cannot import emotalker and keeps its own copy
in blender_addon/properties.py; tests/test_emotions.py checks that copy equals this one.

Importable without torch (the sample generator's renderer runs inside Blender's Python);
`normalise_mix` takes numpy arrays or torch tensors, as the bake's tracks and the models hold them.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from emotalker.core.base.errors import InputError

EMOTIONS = ("neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised")
NEUTRAL = "neutral"
NEUTRAL_INDEX = EMOTIONS.index(NEUTRAL)
MAX_INTENSITY = 3.0  # MEAD's highest level; intensity lies in [0, MAX_INTENSITY], 0 being neutral
MIX_EXAMPLE = "happy=0.7,sad=0.3"


class UnknownEmotionError(InputError, ValueError):
    """An emotion name outside `EMOTIONS` (also a ValueError, for plain callers)."""


def emotion_index(name: str, where=None, context: str = "", hint: str = "") -> int:
    """The position of category `name` in `EMOTIONS`.

    UnknownEmotionError naming `where` (a file or option) otherwise; `context` prefixes the
    problem (e.g. "clip 'c1': "), `hint` ends it.
    """
    if name not in EMOTIONS:
        raise UnknownEmotionError(where, f"{context}unknown emotion {name!r}; expected one of {', '.join(EMOTIONS)}{hint}")
    return EMOTIONS.index(name)


def one_hot(emotions: str | Sequence[str], dtype=np.float32) -> np.ndarray:
    """One-hot weights over `EMOTIONS`: [8] for one name, [T, 8] for a sequence of T names."""
    rows = emotion_index(emotions) if isinstance(emotions, str) else [emotion_index(e) for e in emotions]
    return np.eye(len(EMOTIONS), dtype=dtype)[rows]


def parse_mix(spec: str, where=None) -> np.ndarray:
    """'happy' or a mix 'happy=0.7,sad=0.3' (names in any case) -> float32 weights [8] summing to 1.

    A name without `=weight` counts 1; a name given twice adds up. InputError for an unknown
    name, a weight that is not a finite number >= 0, or a mix with no positive weight.
    """
    weights = np.zeros(len(EMOTIONS), np.float32)
    for part in spec.split(","):
        name, _, value = part.strip().partition("=")
        name = name.strip().lower()
        index = emotion_index(name, where, hint=f" (or a mix like {MIX_EXAMPLE})")
        try:
            w = float(value) if value else 1.0
        except ValueError:
            raise InputError(where, f"emotion weight {value!r} for {name} is not a number") from None
        if not math.isfinite(w) or w < 0:
            raise InputError(where, f"emotion weight for {name} must be a finite number >= 0, got {value}")
        weights[index] += w
    if weights.sum() <= 0:
        raise InputError(where, f"emotion mix {spec!r} has no positive weight")
    return weights / weights.sum()


def normalise_mix(weights, where=None):
    """Emotion weights [..., 8] -> weights summing to 1 per row; an all-zero row -> pure neutral.

    numpy in, numpy out; a torch tensor in, a tensor out (same dtype and device). Normalising
    makes a mix a convex blend of emotions, so 100% happy equals plain happy. InputError when
    the last axis is not 8 long or a weight is negative or not finite.
    """
    if weights.shape[-1] != len(EMOTIONS):
        raise InputError(where, f"emotion weights need {len(EMOTIONS)} values ({', '.join(EMOTIONS)}), "
                                f"got {weights.shape[-1]}")
    xp = np if isinstance(weights, np.ndarray) else _torch()
    if not bool(xp.isfinite(weights).all()) or bool((weights < 0).any()):
        raise InputError(where, "emotion weights must be finite and >= 0")
    total = weights.sum(-1)[..., None]
    active = total > 0
    neutral = xp.zeros_like(weights)
    neutral[..., NEUTRAL_INDEX] = 1
    return xp.where(active, weights / xp.where(active, total, 1), neutral)


def check_intensity(intensity, where=None, context: str = ""):
    """`intensity` (a number, or an array of per-frame values) as float / float64 array.

    InputError naming `where` unless it is a number (not a string or bool) and every value is
    finite and in [0, MAX_INTENSITY]; `context` prefixes the problem.
    """
    try:
        if isinstance(intensity, (str, bytes, bool)):
            raise TypeError
        s = float(intensity) if np.ndim(intensity) == 0 else np.asarray(intensity, np.float64)
    except (TypeError, ValueError):
        raise InputError(where, f"{context}intensity must be a number, got {intensity!r}") from None
    ok = np.isfinite(s) & (s >= 0.0) & (s <= MAX_INTENSITY)
    if not np.all(ok):
        bad = s if np.ndim(s) == 0 else s[~ok][0]
        raise InputError(where, f"{context}intensity must be in [0, {MAX_INTENSITY:g}], got {bad:g}")
    return s


def _torch():
    import torch  # only when a caller already holds a tensor

    return torch
