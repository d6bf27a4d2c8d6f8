"""Phonemes -> visemes -> per-frame mouth parameters (FLAME jaw and expression values).

Each espeak-ng phoneme maps to a viseme: a target jaw opening (radians about
+X) and target values of a few named expression components. Coarticulation
follows Cohen and Massaro's dominance model: every phoneme pulls each
parameter towards its target with a weight that decays exponentially away
from the phoneme's centre, and a frame's value is the dominance-weighted mean
of the targets around it. Bilabials (p, b, m) dominate strongly and, because
smoothing alone can leave a short closure half open, the frame nearest each
bilabial's centre is then closed outright.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emotalker.sample.phonemes import Phoneme


@dataclass(frozen=True)
class Viseme:
    """A mouth shape: jaw opening in radians and expression values by component name.

    dominance: how strongly the shape resists its neighbours (Cohen-Massaro alpha);
    reach: how far in seconds its influence extends (the decay constant).
    """

    jaw: float
    expr: dict[str, float] = field(default_factory=dict)
    dominance: float = 1.0
    reach: float = 0.05


VISEMES: dict[str, Viseme] = {
    "sil": Viseme(0.0, {}, dominance=0.6, reach=0.06),
    "PP": Viseme(0.0, {"lips_press": 0.5}, dominance=6.0, reach=0.03),
    "FF": Viseme(0.035, {"lower_lip_roll_in": 0.6, "upper_lip_raise": 0.2}, dominance=2.0, reach=0.03),
    "TH": Viseme(0.07, {"lips_part": 0.3}, dominance=0.8, reach=0.03),
    "DD": Viseme(0.06, {"lips_part": 0.3}, dominance=0.5, reach=0.03),
    "KK": Viseme(0.09, {"lips_part": 0.3}, dominance=0.4, reach=0.03),
    "CH": Viseme(0.05, {"lips_funnel": 0.6, "lips_part": 0.3}, dominance=1.2, reach=0.04),
    "SS": Viseme(0.035, {"mouth_stretch": 0.3, "lips_part": 0.25}, dominance=1.0, reach=0.03),
    "RR": Viseme(0.06, {"lips_pucker": 0.4, "lips_part": 0.2}, dominance=0.8, reach=0.04),
    "W": Viseme(0.04, {"lips_pucker": 0.8}, dominance=1.5, reach=0.05),
    "J": Viseme(0.06, {"smile": 0.15, "lips_part": 0.3}, dominance=0.6, reach=0.03),
    "AA": Viseme(0.24, {"lips_part": 0.6}, dominance=1.0, reach=0.07),
    "E": Viseme(0.15, {"lips_part": 0.5, "mouth_stretch": 0.2}, dominance=1.0, reach=0.06),
    "I": Viseme(0.09, {"lips_part": 0.45, "mouth_stretch": 0.45}, dominance=1.0, reach=0.06),
    "O": Viseme(0.18, {"lips_funnel": 0.5, "lips_part": 0.4}, dominance=1.0, reach=0.07),
    "U": Viseme(0.08, {"lips_pucker": 0.7, "lips_part": 0.2}, dominance=1.0, reach=0.06),
}

BILABIALS = frozenset({"p", "b", "m"})
# espeak-ng's English phoneme names (ASCII) by viseme; anything else falls back on its first letter.
_PHONEME_VISEME = {
    **{p: "PP" for p in ("p", "b", "m")},
    **{p: "FF" for p in ("f", "v")},
    **{p: "TH" for p in ("T", "D")},
    **{p: "DD" for p in ("t", "d", "n", "l", "t#", "d#", "n-", "l/", "L")},
    **{p: "KK" for p in ("k", "g", "N", "h", "x", "?")},
    **{p: "CH" for p in ("tS", "dZ", "S", "Z")},
    **{p: "SS" for p in ("s", "z")},
    **{p: "RR" for p in ("r", "r-", "R")},
    "w": "W",
    "j": "J",
    **{p: "AA" for p in ("a", "a#", "A", "A:", "A@", "aI", "aU", "aI@", "aU@", "V", "0")},
    **{p: "E" for p in ("e", "E", "e@", "eI", "3", "3:", "@", "@2", "@5", "@L", "a2")},
    **{p: "I" for p in ("i", "i:", "I", "I2", "I#", "i@", "i@3", ";")},
    **{p: "O" for p in ("o", "O", "O:", "O2", "O@", "o@", "oU", "OI")},
    **{p: "U" for p in ("u", "u:", "U", "U@")},
}


def viseme_of(phoneme: str) -> str:
    """The viseme class of an espeak-ng phoneme name; pauses and unknown symbols are silence."""
    if phoneme in _PHONEME_VISEME:
        return _PHONEME_VISEME[phoneme]
    if not phoneme or phoneme[0] in "_|":
        return "sil"
    base = phoneme.rstrip(":#-/2")
    return _PHONEME_VISEME.get(base, _PHONEME_VISEME.get(phoneme[0], "sil"))


@dataclass(frozen=True)
class Segment:
    """A phoneme with its interval [start, end) in seconds and its viseme."""

    phoneme: str
    viseme: str
    start: float
    end: float

    @property
    def centre(self) -> float:
        return 0.5 * (self.start + self.end)


STOPS = frozenset({"p", "b", "t", "d", "k", "g", "tS", "dZ"})
STOP_CLOSURE = 0.05  # seconds of silent closure before a stop's burst


def segments(phonemes: list[Phoneme], duration: float) -> list[Segment]:
    """Turn phoneme start times into intervals (each ends where the next begins).

    espeak-ng reports a stop consonant at its burst; the silent closure before
    it is counted in the previous phoneme. The mouth shuts during that closure,
    so a stop's interval is moved to begin up to STOP_CLOSURE seconds earlier
    (never more than half of the previous phoneme).
    """
    starts = [p.start for p in phonemes]
    for i, p in enumerate(phonemes):
        if p.name in STOPS and i > 0:
            starts[i] = max(p.start - STOP_CLOSURE, 0.5 * (starts[i - 1] + p.start))
    out = []
    for i, p in enumerate(phonemes):
        end = starts[i + 1] if i + 1 < len(phonemes) else duration
        if end > starts[i]:
            out.append(Segment(p.name, viseme_of(p.name), starts[i], min(end, duration)))
    return out


@dataclass
class MouthTrack:
    """Per-frame mouth parameters: jaw opening [T] (radians) and expression values by name, each [T]."""

    jaw_open: np.ndarray
    expr: dict[str, np.ndarray]
    closures: list[tuple[int, float]]  # (frame forced shut, the bilabial's reported time in s)


@dataclass(frozen=True)
class MouthConfig:
    """lead: articulation runs this many seconds ahead of the sound (anticipatory coarticulation);
    loudness: share of the jaw opening that follows the speech loudness rather than the viseme alone."""

    lead: float = 0.04
    loudness: float = 0.8


def closure_time(phoneme: Phoneme, next_start: float) -> float:
    """When the lips are surely shut for a bilabial reported at `phoneme.start`.

    A stop (p, b) is reported at its burst, after the closure; m at its onset.
    """
    if phoneme.name in STOPS:
        return phoneme.start - 0.015
    return min(phoneme.start + 0.015, 0.5 * (phoneme.start + next_start))


def mouth_track(phonemes: list[Phoneme], duration: float, n_frames: int, fps: float,
                loudness: np.ndarray | None = None, config: MouthConfig = MouthConfig()) -> MouthTrack:
    """Cohen-Massaro blend of the visemes' targets at each frame time, loudness, then bilabial closures.

    loudness [T]: the speech envelope at the frame times (see `speech_envelope`), or None.
    Returns jaw_open [T] and expr {name: [T]} for every component any viseme uses.
    """
    t = np.arange(n_frames) / fps + config.lead
    names = sorted({k for v in VISEMES.values() for k in v.expr})
    segs = segments(phonemes, duration)
    if not segs:
        return MouthTrack(np.zeros(n_frames, np.float32), {k: np.zeros(n_frames, np.float32) for k in names}, [])
    centres = np.array([s.centre for s in segs])
    halfw = np.array([0.5 * (s.end - s.start) for s in segs])
    vis = [VISEMES[s.viseme] for s in segs]
    alpha = np.array([v.dominance for v in vis])
    reach = np.array([v.reach for v in vis])
    # Dominance is flat across the phoneme itself and decays exponentially outside it.
    dist = np.maximum(np.abs(t[:, None] - centres[None]) - halfw[None], 0.0)
    dom = alpha[None] * np.exp(-dist / reach[None]) + 1e-9
    dom /= dom.sum(1, keepdims=True)
    targets = {"jaw": np.array([v.jaw for v in vis])}
    for k in names:
        targets[k] = np.array([v.expr.get(k, 0.0) for v in vis])
    values = {k: (dom @ v).astype(np.float32) for k, v in targets.items()}
    if loudness is not None and loudness.max() > 0:
        # Louder speech opens the jaw wider; the viseme sets the shape, loudness the size.
        level = np.clip(loudness / max(float(np.percentile(loudness, 95)), 1e-6), 0.0, 1.2)
        values["jaw"] *= (1.0 - config.loudness) + config.loudness * level.astype(np.float32)

    closures = []
    for i, p in enumerate(phonemes):
        if p.name not in BILABIALS:
            continue
        nxt = phonemes[i + 1].start if i + 1 < len(phonemes) else duration
        f = int(round(closure_time(p, nxt) * fps))
        if not 0 <= f < n_frames:
            continue
        closures.append((f, p.start))
        # Shut the lips on that frame and ease the neighbours towards shut.
        for df, w in ((0, 1.0), (-1, 0.5), (1, 0.5)):
            g = f + df
            if 0 <= g < n_frames:
                values["jaw"][g] *= 1.0 - w
                for k in ("lips_part", "lips_funnel", "lips_pucker", "lower_lip_roll_in", "mouth_stretch"):
                    values[k][g] *= 1.0 - w
                values["lips_press"][g] = max(values["lips_press"][g], 0.5 * w)
    jaw = values.pop("jaw")
    return MouthTrack(jaw, values, closures)


# Expression components that part the lips; a bilabial closure overrides them (emotion included).
LIP_OPENERS = ("lips_part", "lips_funnel", "upper_lip_raise", "lower_lip_depress", "upper_lip_raise_left",
               "upper_lip_raise_right", "lower_lip_depress_left", "lower_lip_depress_right", "mouth_stretch")


def shut_lips(expr: np.ndarray, jaw_open: np.ndarray, closures: list[tuple[int, float]], expr_names: list[str]) -> None:
    """Close the mouth in place on each closure frame (and half on its neighbours), whatever else
    (an emotion's open mouth, say) adds to it. expr [T,E] by `expr_names`, jaw_open [T]."""
    idx = [expr_names.index(n) for n in LIP_OPENERS if n in expr_names]
    T = len(jaw_open)
    for f, _ in closures:
        for df, w in ((0, 1.0), (-1, 0.5), (1, 0.5)):
            g = f + df
            if 0 <= g < T:
                jaw_open[g] *= 1.0 - w
                expr[g, idx] = np.where(expr[g, idx] > 0, expr[g, idx] * (1.0 - w), expr[g, idx])


def speech_envelope(samples: np.ndarray, sample_rate: int, n_frames: int, fps: float, window: float = 0.04) -> np.ndarray:
    """RMS loudness of `samples` [N] in a `window`-second box around each frame time: [T]."""
    half = int(window * sample_rate / 2)
    centres = (np.arange(n_frames) / fps * sample_rate).astype(np.int64)
    sq = np.concatenate([[0.0], np.cumsum(samples.astype(np.float64) ** 2)])
    lo = np.clip(centres - half, 0, len(samples))
    hi = np.clip(centres + half, 0, len(samples))
    n = np.maximum(hi - lo, 1)
    return np.sqrt((sq[hi] - sq[lo]) / n).astype(np.float32)
