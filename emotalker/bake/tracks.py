"""Emotion tracks: parse the tracks JSON and evaluate it per frame like Blender F-curves.

File format (docs/architecture.md, "Emotion tracks"):

    {"format": "emotalker-tracks/1", "fps": 25,
     "tracks": {"emotion.happy": {"interpolation": "bezier", "keys": [[1, 0.0], [40, 1.0]]},
                "intensity":     {"keys": [[1, 1.0], [80, 2.5]]},
                "blink":         {"keys": []}}}

Channels: `emotion.<name>` for the 8 MEAD names (value in [0, 1]), `intensity`
in [0, 3], `blink` in [0, 1]. A key is `[frame, value]` with timeline frame
numbers strictly increasing. Per track: `interpolation` is `constant | linear |
bezier` (default `bezier`, Blender's default) and, for bezier, `smoothing` is
`cont_accel | none` (default `cont_accel`: what Blender 5 gives a new F-curve,
the preference "F-Curve auto smoothing"). A track with no keys is absent.

Evaluation follows Blender's F-curve rules for keys whose handles are all
"Auto Clamped" (Blender's default handle type) on an F-curve with constant
extrapolation:

- before the first key and after the last: the key's value (constant extrapolation);
- `constant`: the value of the last key at or before the frame;
- `linear`: straight lines between keys;
- `bezier`: a cubic Bezier per segment through the two keys and their handles.
  The first and last key always get flat handles (Blender flattens the end
  keys of a curve with constant extrapolation). The other handles:
  * `smoothing: none`: a key's two handles are collinear; their slope is the
    mean of the slopes of the two neighbouring key-to-key secants, and each
    handle reaches 1/2.5614 of its own neighbouring interval along the frame
    axis (an interval longer than 5x the other counts as 5x the other).
    Clamping: at a local extremum (both neighbours on the same side, or equal)
    both handles are flat; otherwise a handle whose value passes its
    neighbouring key's value is cut to that value and the other handle is
    turned to stay collinear (the left one wins when both pass). Frames map to
    the Bezier parameter by solving the cubic in frame.
  * `smoothing: cont_accel`: handles reach 1/3 of each interval, so each
    segment is a cubic in the frame and the curve is a cubic spline: the key
    slopes solve the tridiagonal system for continuous second derivative at
    every inner key, with flat end keys, subject to the clamp that no handle
    passes its neighbouring key's value or turns against the segment (which
    makes extrema flat). Violating slopes are pinned to their limit and the
    system is solved again, a pinned slope being released when its own
    equation pulls it back inside (at most twice), until none violates.
  tests/test_tracks.py checks both against bpy's `FCurve.evaluate`.

The result per frame (`TrackFrames`): emotion weights [T, 8] in the order of
`EMOTIONS`, normalised to sum 1 where any weight is > 0, and pure `neutral`
(one-hot) where every emotion channel is 0 or absent; intensity [T] (1.0 when
there is no intensity track); blink [T] (0.0 when there is no blink track).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from emotalker.core.base.emotions import EMOTIONS, MAX_INTENSITY, check_intensity, emotion_index, normalise_mix
from emotalker.core.base.errors import InputError
from emotalker.core.base.fileio import read_json
from emotalker.core.base.limits import check_fps

FORMAT = "emotalker-tracks/1"
INTERPOLATIONS = ("constant", "linear", "bezier")
SMOOTHINGS = ("cont_accel", "none")
RANGES = {**{f"emotion.{name}": (0.0, 1.0) for name in EMOTIONS}, "intensity": (0.0, MAX_INTENSITY), "blink": (0.0, 1.0)}
DEFAULT_INTENSITY = 1.0
DEFAULT_BLINK = 0.0

# Blender's auto-handle length factor (handle reach = interval / 2.5614 without smoothing).
_AUTO_HANDLE = 2.5614


@dataclass(frozen=True)
class Track:
    """One channel's keys. frames [K] strictly increasing, values [K]."""

    frames: np.ndarray
    values: np.ndarray
    interpolation: str = "bezier"
    smoothing: str = "cont_accel"

    def evaluate(self, t: np.ndarray) -> np.ndarray:
        """Values at frames `t` [T] (float) -> [T] float64."""
        return evaluate_fcurve(self.frames, self.values, np.asarray(t, dtype=np.float64), self.interpolation, self.smoothing)


@dataclass(frozen=True)
class TrackFrames:
    """Per-frame track values: frames [T], emotion [T, 8] (sums to 1), intensity [T], blink [T]."""

    frames: np.ndarray
    emotion: np.ndarray
    intensity: np.ndarray
    blink: np.ndarray


@dataclass(frozen=True)
class Tracks:
    """A validated set of channels (only channels with keys) and the timeline fps."""

    fps: float
    channels: Mapping[str, Track]
    source: str | None = None  # the file they came from, for error messages

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tracks":
        """Read and validate a tracks JSON file; InputError naming the file and channel on any problem."""
        return cls.from_dict(read_json(path, "tracks file"), source=os.fspath(path))

    @classmethod
    def from_dict(cls, obj: Any, source: str | None = None) -> "Tracks":
        """Validate a parsed tracks document (see the module docstring for the format)."""
        where = source or "tracks"
        if not isinstance(obj, dict):
            raise InputError(where, "a tracks file must be a JSON object")
        if obj.get("format") != FORMAT:
            raise InputError(where, f"format is {obj.get('format')!r}, expected {FORMAT!r}")
        fps = check_fps(obj.get("fps"), where)
        tracks = obj.get("tracks")
        if not isinstance(tracks, dict):
            raise InputError(where, "'tracks' must be an object mapping channel names to {'keys': [...]}")
        channels = {}
        for name, spec in tracks.items():
            track = _parse_track(where, name, spec)
            if track is not None:
                channels[name] = track
        return cls(fps, channels, source)

    @classmethod
    def constant(cls, emotion: str, intensity: float, fps: float = 25.0, blink: float | None = None,
                 frame: float = 1.0) -> "Tracks":
        """The `--emotion NAME --intensity X` shorthand: constant tracks for the whole clip.

        Each channel has one key at `frame` (the first timeline frame, 1 as in Blender);
        one key means the value holds everywhere.
        """
        emotion_index(emotion, "--emotion")
        check_intensity(intensity, "--intensity")
        check_fps(fps, "--fps")
        one = lambda v: Track(np.array([float(frame)]), np.array([float(v)]), "constant")  # noqa: E731
        channels = {f"emotion.{emotion}": one(1.0), "intensity": one(intensity)}
        if blink is not None:
            channels["blink"] = one(blink)
        return cls(float(fps), channels, f"--emotion {emotion} --intensity {intensity:g}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON document for these tracks (round-trips through `from_dict`)."""
        return {"format": FORMAT, "fps": self.fps, "tracks": {
            name: {"interpolation": t.interpolation, "smoothing": t.smoothing,
                   "keys": [[float(f), float(v)] for f, v in zip(t.frames, t.values)]}
            for name, t in self.channels.items()}}

    def key_range(self) -> tuple[float, float] | None:
        """(first key frame, last key frame) over all channels, or None without keys."""
        if not self.channels:
            return None
        return (min(float(t.frames[0]) for t in self.channels.values()),
                max(float(t.frames[-1]) for t in self.channels.values()))

    def require_keys_within(self, first_frame: float, last_frame: float, what: str) -> None:
        """InputError naming the tracks file and channel when a key lies outside [first_frame, last_frame].

        `what` says what the range is, e.g. "the audio (frames 1..120 of a.wav)".
        """
        for name, track in self.channels.items():
            outside = track.frames[(track.frames < first_frame) | (track.frames > last_frame)]
            if outside.size:
                raise InputError(self.source, f"channel {name!r} has a key at frame {outside[0]:g}, outside {what}")

    def evaluate(self, frames: np.ndarray) -> TrackFrames:
        """Per-frame values at timeline `frames` [T] -> TrackFrames (emotion [T,8], intensity [T], blink [T])."""
        frames = np.asarray(frames, dtype=np.float64).reshape(-1)
        weights = np.zeros((frames.size, len(EMOTIONS)))
        for i, name in enumerate(EMOTIONS):
            track = self.channels.get(f"emotion.{name}")
            if track is not None:
                weights[:, i] = track.evaluate(frames)
        weights = normalise_mix(np.clip(weights, 0.0, 1.0), self.source)
        return TrackFrames(frames, weights, self._channel("intensity", frames, DEFAULT_INTENSITY),
                           self._channel("blink", frames, DEFAULT_BLINK))

    def _channel(self, name: str, frames: np.ndarray, default: float) -> np.ndarray:
        track = self.channels.get(name)
        if track is None:
            return np.full(frames.shape, default)
        # Clamped handles cannot overshoot the keys; the clip only absorbs float rounding.
        return np.clip(track.evaluate(frames), *RANGES[name])


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _parse_track(where: str, name: str, spec: Any) -> Track | None:
    if name not in RANGES:
        if name.startswith("emotion."):
            emotion_index(name[len("emotion."):], where, context=f"channel {name!r}: ")  # raises: every known one is in RANGES
        raise InputError(where, f"unknown channel {name!r}; expected emotion.<name>, intensity or blink")
    if not isinstance(spec, dict):
        raise InputError(where, f"channel {name!r} must be an object with 'keys'")
    unknown = set(spec) - {"keys", "interpolation", "smoothing"}
    if unknown:
        raise InputError(where, f"channel {name!r} has unknown fields {sorted(unknown)}")
    interpolation = spec.get("interpolation", "bezier")
    if interpolation not in INTERPOLATIONS:
        raise InputError(where, f"channel {name!r}: unknown interpolation {interpolation!r}; expected one of {', '.join(INTERPOLATIONS)}")
    smoothing = spec.get("smoothing", "cont_accel")
    if smoothing not in SMOOTHINGS:
        raise InputError(where, f"channel {name!r}: unknown smoothing {smoothing!r}; expected one of {', '.join(SMOOTHINGS)}")
    keys = spec.get("keys", [])
    if not isinstance(keys, list):
        raise InputError(where, f"channel {name!r}: 'keys' must be a list of [frame, value] pairs")
    lo, hi = RANGES[name]
    for i, key in enumerate(keys):
        if not (isinstance(key, list) and len(key) == 2 and all(_is_number(x) for x in key)):
            raise InputError(where, f"channel {name!r}: key {i} is {key!r}, expected [frame, value] with finite numbers")
        if not lo <= key[1] <= hi:
            raise InputError(where, f"channel {name!r}: key {i} at frame {key[0]:g} has value {key[1]:g}, outside [{lo:g}, {hi:g}]")
        if i and key[0] <= keys[i - 1][0]:
            raise InputError(where, f"channel {name!r}: key frames must increase, but key {i} at frame {key[0]:g} "
                                    f"follows frame {keys[i - 1][0]:g}")
    if not keys:
        return None
    arr = np.asarray(keys, dtype=np.float64)
    return Track(arr[:, 0].copy(), arr[:, 1].copy(), interpolation, smoothing)


# --- F-curve evaluation ---------------------------------------------------------------


def evaluate_fcurve(kx: np.ndarray, ky: np.ndarray, t: np.ndarray, interpolation: str, smoothing: str = "cont_accel") -> np.ndarray:
    """Evaluate keys (kx [K] increasing, ky [K]) at frames t [T] like a Blender F-curve -> [T]."""
    if len(kx) == 1:
        return np.full(t.shape, float(ky[0]))
    # Segment index: keys i and i+1 bracket t; constant extrapolation outside.
    seg = np.clip(np.searchsorted(kx, t, side="right") - 1, 0, len(kx) - 2)
    x0, x1, y0, y1 = kx[seg], kx[seg + 1], ky[seg], ky[seg + 1]
    u = np.clip((t - x0) / (x1 - x0), 0.0, 1.0)
    if interpolation == "constant":
        out = np.where(u >= 1.0, y1, y0)
    elif interpolation == "linear":
        out = y0 + (y1 - y0) * u
    elif interpolation == "bezier":
        left, right = bezier_handles(kx, ky, smoothing)  # [K, 2] each: (frame, value)
        hx0, hy0 = right[seg, 0], right[seg, 1]
        hx1, hy1 = left[seg + 1, 0], left[seg + 1, 1]
        s = u if smoothing == "cont_accel" else _solve_bezier_x(x0, hx0, hx1, x1, t)
        out = _bezier(y0, hy0, hy1, y1, s)
    else:
        raise ValueError(f"unknown interpolation {interpolation!r}")
    out = np.where(t <= kx[0], ky[0], out)
    return np.where(t >= kx[-1], ky[-1], out)


def bezier_handles(kx: np.ndarray, ky: np.ndarray, smoothing: str = "cont_accel") -> tuple[np.ndarray, np.ndarray]:
    """Auto-clamped handles of keys (kx [K], ky [K]) -> (left [K, 2], right [K, 2]) as (frame, value)."""
    if smoothing == "cont_accel":
        return _handles_cont_accel(kx, ky)
    if smoothing == "none":
        return _handles_none(kx, ky)
    raise ValueError(f"unknown smoothing {smoothing!r}")


def _bezier(p0, p1, p2, p3, s):
    r = 1.0 - s
    return r * r * r * p0 + 3 * r * r * s * p1 + 3 * r * s * s * p2 + s * s * s * p3


def _solve_bezier_x(x0, x1, x2, x3, t, iterations: int = 60):
    """Parameter s in [0,1] with bezier(x0..x3, s) = t, by bisection (x is monotonic in s)."""
    lo = np.zeros_like(t)
    hi = np.ones_like(t)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        below = _bezier(x0, x1, x2, x3, mid) < t
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def _handles_none(kx, ky):
    n = len(kx)
    left = np.stack([kx.astype(np.float64), ky.astype(np.float64)], 1)
    right = left.copy()
    for k in range(n):
        if k == 0 or k == n - 1:
            # End key: the neighbour is mirrored, so both reaches equal the one interval; flat.
            d = kx[1] - kx[0] if k == 0 else kx[-1] - kx[-2]
            left[k, 0] -= d / _AUTO_HANDLE
            right[k, 0] += d / _AUTO_HANDLE
            continue
        da, db = kx[k] - kx[k - 1], kx[k + 1] - kx[k]
        slope = 0.5 * ((ky[k] - ky[k - 1]) / da + (ky[k + 1] - ky[k]) / db)
        reach_a, reach_b = min(da, 5 * db) / _AUTO_HANDLE, min(db, 5 * da) / _AUTO_HANDLE
        left[k] = kx[k] - reach_a, ky[k] - slope * reach_a
        right[k] = kx[k] + reach_b, ky[k] + slope * reach_b
        prev_up, next_up = ky[k - 1] - ky[k], ky[k + 1] - ky[k]
        left_cut = right_cut = False
        if (prev_up <= 0 and next_up <= 0) or (prev_up >= 0 and next_up >= 0):
            left[k, 1] = right[k, 1] = ky[k]
            left_cut = True
        else:
            if (prev_up <= 0 and left[k, 1] < ky[k - 1]) or (prev_up > 0 and left[k, 1] > ky[k - 1]):
                left[k, 1], left_cut = ky[k - 1], True
            if (next_up <= 0 and right[k, 1] < ky[k + 1]) or (next_up > 0 and right[k, 1] > ky[k + 1]):
                right[k, 1], right_cut = ky[k + 1], True
        # Keep the handles collinear after a cut (the left handle wins).
        if left_cut:
            right[k, 1] = ky[k] + (ky[k] - left[k, 1]) / reach_a * reach_b
        elif right_cut:
            left[k, 1] = ky[k] - (right[k, 1] - ky[k]) / reach_b * reach_a
    return left, right


def _handles_cont_accel(kx, ky):
    n = len(kx)
    d = np.diff(kx)  # [K-1] interval lengths
    secant = np.diff(ky) / d  # [K-1]
    # Slope limits from clamping: a handle (reach d/3) stays between its key and the neighbour.
    lo = np.full(n, -np.inf)
    hi = np.full(n, np.inf)
    for seg in range(n - 1):
        bound = 3.0 * secant[seg]
        for k in (seg, seg + 1):
            lo[k] = max(lo[k], min(0.0, bound))
            hi[k] = min(hi[k], max(0.0, bound))
    # Continuous second derivative at inner keys (a cubic spline in frame); flat end keys.
    a = np.zeros((n, n))
    b = np.zeros(n)
    for k in range(1, n - 1):
        a[k, k - 1] = 1.0 / d[k - 1]
        a[k, k] = 2.0 * (1.0 / d[k - 1] + 1.0 / d[k])
        a[k, k + 1] = 1.0 / d[k]
        b[k] = 3.0 * (secant[k - 1] / d[k - 1] + secant[k] / d[k])
    pinned = {0: 0.0, n - 1: 0.0}
    releases = np.zeros(n, dtype=int)
    slopes = np.zeros(n)
    for _ in range(4 * n + 4):
        slopes = _solve_pinned(a, b, pinned)
        over = [k for k in range(1, n - 1) if k not in pinned and not lo[k] - 1e-12 <= slopes[k] <= hi[k] + 1e-12]
        if over:
            for k in over:
                pinned[k] = hi[k] if slopes[k] > hi[k] else lo[k]
            continue
        released = False
        for k in [k for k in pinned if 0 < k < n - 1 and releases[k] < 2]:
            pull = b[k] - a[k] @ slopes
            if (pull > 0 and slopes[k] < hi[k]) or (pull < 0 and slopes[k] > lo[k]):
                del pinned[k]
                releases[k] += 1
                released = True
        if not released:
            break
    left = np.stack([kx - np.r_[d[:1], d] / 3.0, ky - slopes * np.r_[d[:1], d] / 3.0], 1)
    right = np.stack([kx + np.r_[d, d[-1:]] / 3.0, ky + slopes * np.r_[d, d[-1:]] / 3.0], 1)
    return left, right


def _solve_pinned(a: np.ndarray, b: np.ndarray, pinned: dict[int, float]) -> np.ndarray:
    """Solve a @ x = b with the rows of pinned unknowns replaced by x[k] = value."""
    a = a.copy()
    b = b.copy()
    for k, value in pinned.items():
        a[k] = 0.0
        a[k, k] = 1.0
        b[k] = value
    return np.linalg.solve(a, b)


def load_tracks_or_shorthand(tracks: str | os.PathLike | None, emotion: str | None, intensity: float | None,
                             fps: float | None = None) -> Tracks:
    """The CLI's `--tracks T.json | --emotion NAME --intensity X` choice, validated."""
    if tracks is not None:
        if emotion is not None or intensity is not None:
            raise InputError(Path(tracks), "give either --tracks or --emotion/--intensity, not both")
        return Tracks.load(tracks)
    if emotion is None:
        raise InputError(None, "give --tracks T.json or --emotion NAME (with --intensity X)")
    return Tracks.constant(emotion, DEFAULT_INTENSITY if intensity is None else intensity, fps or 25.0)
