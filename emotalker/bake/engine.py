"""The bake engine: per-frame FLAME curves and emotion -> per-frame Gaussians, streamed.

Two pieces on top of the avatar (emotalker.core.models.avatar.Avatar, which
evaluates Stage 1 and, when present, Stage 2), each with one job:

- `FlameCurves`: the per-frame FLAME parameters of a clip (what A2E predicts,
  plus eyelids from the blink track), saved as an editable .npz that `--flame-curves`
  reads back (the Blender add-on edits them as F-curves);
- `FrameProducer`: the streaming producer the frame loop calls per frame. It
  evaluates `chunk` frames at once (batched tensors are several times faster
  than one frame at a time) and keeps only that chunk, so memory does not grow
  with the clip.

Timeline: frame numbers are Blender's, and frame `frame_start` (1 unless a
curves file says otherwise) is at audio time 0; curve row i is frame
frame_start + i.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from emotalker.core.base.emotions import EMOTIONS, NEUTRAL, one_hot
from emotalker.core.models.avatar import Avatar, FrameConditions
from emotalker.core.models.bundle import AvatarBundle
from emotalker.core.render.gaussians import Gaussians
from emotalker.core.rig.flame import FlameParams
from emotalker.core.base.errors import InputError
from emotalker.core.base.fileio import atomic_path, read_npz, require_finite

CURVES_FORMAT = "emotalker-flame-curves/1"


@dataclass(frozen=True)
class FlameCurves:
    """Per-frame FLAME parameters of a clip, T rows.

    expr [T,E], jaw [T,3], neck [T,3], eyes [T,6], eyelids [T,2] (all float32,
    poses axis-angle in radians), emotion_weights [T,8] over EMOTIONS and
    intensity [T] (what produced them; informative), fps, and frame_start: the
    timeline frame of row 0.
    """

    expr: np.ndarray
    jaw: np.ndarray
    neck: np.ndarray
    eyes: np.ndarray
    eyelids: np.ndarray
    emotion_weights: np.ndarray
    intensity: np.ndarray
    fps: float
    frame_start: int = 1

    def __len__(self) -> int:
        return int(self.expr.shape[0])

    @property
    def frame_end(self) -> int:
        return self.frame_start + len(self) - 1

    def rows(self, frames: np.ndarray) -> np.ndarray:
        """Row indices [B] of timeline `frames` [B] (which must lie in frame_start..frame_end)."""
        return np.asarray(frames, dtype=np.int64) - self.frame_start

    @classmethod
    def from_a2e(cls, curves: dict, fps: float, blink: np.ndarray | None = None) -> "FlameCurves":
        """The curves of an A2E run (`core.models.a2e.infer_curves`: expr, jaw, neck, emotion_weights,
        intensity, T rows), from timeline frame 1; eyelids follow `blink` [T] (both lids alike; default open)."""
        T = len(curves["expr"])
        blink = np.zeros(T, np.float32) if blink is None else np.asarray(blink, dtype=np.float32).reshape(T)
        return cls(curves["expr"], curves["jaw"], curves["neck"], np.zeros((T, 6), np.float32),
                   np.stack([blink, blink], 1), curves["emotion_weights"], curves["intensity"], float(fps), 1)

    def save(self, path: str | os.PathLike, expr_names: list[str] | None = None, audio: str | None = None) -> Path:
        """Write the .npz atomically, stamped with CURVES_FORMAT: the one writer of the FLAME-curves file."""
        path = Path(path)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, format=np.str_(CURVES_FORMAT), expr=self.expr, jaw=self.jaw, neck=self.neck,
                         eyes=self.eyes, eyelids=self.eyelids, emotion_weights=self.emotion_weights,
                         intensity=self.intensity, emotions=np.array(EMOTIONS), fps=np.float64(self.fps),
                         frame_start=np.int64(self.frame_start),
                         expr_names=np.array(expr_names or [], dtype=np.str_), audio=np.str_(audio or ""))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, n_expr: int) -> "FlameCurves":
        """Read curves written by `save` (or by an earlier version, unstamped); InputError naming the file and
        the key at fault.

        `n_expr`: the rig's expression count (a file may hold fewer, never more).
        Missing eyes/eyelids/emotion keys default to zeros / neutral.
        """
        path = Path(path)
        arrays = read_npz(path, "FLAME curves")
        if "format" in arrays and str(arrays["format"]) != CURVES_FORMAT:
            raise InputError(path, f"format is {str(arrays['format'])!r}, expected {CURVES_FORMAT!r}")
        for key in ("expr", "jaw", "neck", "fps"):
            if key not in arrays:
                raise InputError(path, f"FLAME curves file has no {key!r} array")
        expr = arrays["expr"]
        if expr.ndim != 2 or expr.shape[0] < 1:
            raise InputError(path, f"'expr' must be [T, E] with T >= 1, got shape {list(expr.shape)}")
        T = expr.shape[0]
        if expr.shape[1] > n_expr:
            raise InputError(path, f"'expr' has {expr.shape[1]} components but the avatar's rig has {n_expr}")
        defaults = {"eyes": np.zeros((T, 6)), "eyelids": np.zeros((T, 2)),
                    "emotion_weights": one_hot([NEUTRAL] * T, np.float64),
                    "intensity": np.zeros(T)}
        shapes = {"jaw": (T, 3), "neck": (T, 3), "eyes": (T, 6), "eyelids": (T, 2),
                  "emotion_weights": (T, len(EMOTIONS)), "intensity": (T,)}
        out = {"expr": expr}
        for key, shape in shapes.items():
            value = arrays.get(key, defaults.get(key))
            if value is None or tuple(value.shape) != shape:
                got = None if value is None else list(value.shape)
                raise InputError(path, f"{key!r} must have shape {list(shape)} (T = {T} frames of 'expr'), got {got}")
            out[key] = value
        for key, value in out.items():
            if not np.issubdtype(value.dtype, np.number) or not np.isfinite(value).all():
                raise InputError(path, f"{key!r} holds NaN, infinite or non-numeric values")
        fps = float(arrays["fps"])
        frame_start = int(arrays["frame_start"]) if "frame_start" in arrays else 1
        if not np.isfinite(fps) or fps <= 0:
            raise InputError(path, f"'fps' must be a positive number, got {fps}")
        return cls(**{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}, fps=fps,
                   frame_start=frame_start)


def curves_from_a2e(bundle: AvatarBundle, samples: np.ndarray, emotion: np.ndarray, intensity: np.ndarray,
                    blink: np.ndarray, fps: float, device: str | torch.device = "cpu") -> FlameCurves:
    """Run the avatar's A2E on 16 kHz `samples` [N] with per-frame emotion [T,8] and intensity [T];
    eyelids follow the blink track [T] (both lids alike). T = the audio's frame count at `fps`."""
    from emotalker.core.models.a2e import infer_curves, load_a2e

    model, _ = load_a2e(bundle, device)
    curves = infer_curves(model, samples, emotion.astype(np.float32), intensity.astype(np.float32), fps, device)
    return FlameCurves.from_a2e(curves, fps, blink)


class FrameProducer:
    """`produce(frame)` for the frame loop: the Gaussians of one timeline frame, `chunk` frames evaluated at once.

    curves: FlameCurves covering every frame asked for; emotion [T,8], intensity [T],
    blink [T]: the track values per curve row; audio(frames) -> [len(frames), Da]:
    the audio windows of timeline frames, cut one chunk at a time (an AudioWindows
    call), and camera [3]: the camera code (both for Stage 2; None without it);
    source: the avatar folder, named when a frame comes out non-finite (checked
    before any sink writes it). Only the current chunk is kept.

    Chunks are fixed blocks of curve rows (rows 0..chunk-1, chunk..2*chunk-1, ...),
    whatever the frame range and whichever frames a resumed run still needs:
    batched matrix products round differently for different batch sizes, so a
    frame must always be evaluated in the same batch for a resumed or partial bake
    to write byte-identical files.
    """

    def __init__(self, avatar: Avatar, curves: FlameCurves, emotion: np.ndarray, intensity: np.ndarray,
                 blink: np.ndarray, chunk: int = 8, device: str | torch.device = "cpu",
                 audio: Callable[[np.ndarray], np.ndarray] | None = None,
                 camera: torch.Tensor | None = None, source: str | os.PathLike | None = None):
        self.avatar, self.curves = avatar, curves
        self.emotion, self.intensity, self.blink = emotion, intensity, blink
        self.audio, self.camera = audio, camera
        self.chunk = max(1, int(chunk))
        self.source = source
        self.device = device
        self._block: int | None = None
        self._cached: dict[int, Gaussians] = {}

    def conditions(self, frames: list[int]) -> FrameConditions:
        """The FrameConditions of timeline `frames` (within the curves)."""
        rows = self.curves.rows(np.asarray(frames))
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a[rows]), dtype=torch.float32, device=self.device)  # noqa: E731
        c = self.curves
        params = FlameParams(expr=t(c.expr), jaw=t(c.jaw), neck=t(c.neck), eyes=t(c.eyes), eyelids=t(c.eyelids))
        audio = None if self.audio is None else torch.as_tensor(self.audio(np.asarray(frames)), device=self.device)
        return FrameConditions(params, t(self.emotion), t(self.intensity), t(self.blink), audio, self.camera)

    def _require_finite(self, batch, frames: list[int]) -> None:
        """Frames are checked before any sink writes them: a NaN would go into the files silently."""
        fields = ("means", "quats", "log_scales", "opacity_logits", "sh")
        require_finite({f: getattr(batch, f) for f in fields}, self.source, f"frames {frames[0]}..{frames[-1]}: "
                       f"Gaussian", "the avatar or the FLAME curves are corrupt; nothing of these frames was written")

    def __call__(self, frame: int) -> Gaussians:
        """The raw Gaussians of timeline `frame`."""
        c = self.curves
        if not c.frame_start <= frame <= c.frame_end:
            raise ValueError(f"frame {frame} is outside the curves' frames {c.frame_start}..{c.frame_end}")
        block = (frame - c.frame_start) // self.chunk
        if block != self._block:
            first = c.frame_start + block * self.chunk
            todo = list(range(first, min(first + self.chunk, c.frame_end + 1)))
            batch = self.avatar.evaluate(self.conditions(todo))
            self._require_finite(batch, todo)
            self._cached = dict(zip(todo, batch.unbind()))  # drops the previous block
            self._block = block
        return self._cached[frame]
