"""The bake engine: per-frame FLAME curves and emotion -> per-frame Gaussians, streamed.

Three pieces, each with one job:

- `FlameCurves`: the per-frame FLAME parameters of a clip (what A2E predicts,
  plus eyelids from the blink track), saved as an editable .npz that `--flame-curves`
  reads back (the Blender add-on edits them as F-curves);
- `AvatarEvaluator`: the avatar's per-frame Gaussians. Stage 1 always; Stage 2
  (emotion offsets, `Stage2Offsets`) plugs in at exactly one place,
  `AvatarEvaluator.evaluate`, when the bundle has it and the caller did not
  turn it off (`--no-emotion`);
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emotalker.core.base.emotions import EMOTIONS, NEUTRAL, one_hot
from emotalker.core.models.bundle import AvatarBundle
from emotalker.core.base.errors import InputError
from emotalker.core.base.fileio import atomic_path, read_npz

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
                    blink: np.ndarray, fps: float, device: Any = "cpu") -> FlameCurves:
    """Run the avatar's A2E on 16 kHz `samples` [N] with per-frame emotion [T,8] and intensity [T];
    eyelids follow the blink track [T] (both lids alike). T = the audio's frame count at `fps`."""
    from emotalker.core.models.a2e import infer_curves, load_from_bundle

    model, _ = load_from_bundle(bundle, device)
    curves = infer_curves(model, samples, emotion.astype(np.float32), intensity.astype(np.float32), fps, device)
    return FlameCurves.from_a2e(curves, fps, blink)


@dataclass
class FrameInputs:
    """What one batch of B frames needs: FLAME params (fields [B, ...]), emotion [B,8], intensity [B],
    blink [B], and the timeline frames [B]."""

    params: Any  # emotalker.core.rig.flame.FlameParams
    emotion: Any
    intensity: Any
    blink: Any
    frames: np.ndarray
    extras: dict = field(default_factory=dict)  # what Stage 2 may need besides (audio window, camera code)


class AvatarEvaluator:
    """Per-frame Gaussians of an avatar: Stage 1 alone, or Stage 1 + Stage 2 emotion offsets.

    Build with `AvatarEvaluator.open(bundle, use_emotion=...)`; `evaluate(inputs)`
    returns one raw `Gaussians` a frame (face Gaussians first, then teeth).
    """

    def __init__(self, stage1, stage2: "Stage2Offsets | None" = None, sh_degree: int | None = None):
        self.stage1 = stage1
        self.stage2 = stage2
        self.sh_degree = stage1.active_sh_degree if sh_degree is None else sh_degree

    @classmethod
    def open(cls, bundle: AvatarBundle, device: Any = "cpu", use_emotion: bool = True,
             sh_degree: int | None = None) -> "AvatarEvaluator":
        """Load Stage 1 (required) and, when the bundle has it and `use_emotion`, Stage 2."""
        from emotalker.core.models.blendshapes import GaussianBlendshapes
        from emotalker.core.rig.flame import FlameModel

        path = bundle.require_stage("neutral")
        stage1 = GaussianBlendshapes.load(path, FlameModel.load(bundle.flame_path), device=device).eval()
        for p in stage1.parameters():
            p.requires_grad_(False)
        stage2 = Stage2Offsets.open(bundle, stage1, device) if use_emotion and bundle.has_stage("emotion") else None
        degree = stage1.active_sh_degree if sh_degree is None else min(sh_degree, stage1.active_sh_degree)
        return cls(stage1, stage2, degree)

    @property
    def n_gaussians(self) -> int:
        return self.stage1.n_gaussians + self.stage1.n_teeth

    @property
    def uses_emotion(self) -> bool:
        return self.stage2 is not None

    @property
    def audio_features(self):
        """The FeatureConfig of the audio windows Stage 2 reads (None without Stage 2)."""
        return None if self.stage2 is None else self.stage2.deformer.cfg.features

    def evaluate(self, inputs: FrameInputs) -> list:
        """FrameInputs of B frames -> B `Gaussians` (Stage 1, plus Stage 2's offsets when loaded)."""
        import torch

        with torch.inference_mode():
            batch = self.stage1.evaluate(inputs.params, self.sh_degree)
            if self.stage2 is not None:
                # The one place Stage 2 plugs in: offsets of rotation, scale, colour and opacity on
                # top of the neutral state, from the frame's FLAME params, emotion, intensity, blink,
                # audio window and camera code.
                self.stage2(batch, inputs)
        return batch.unbind()


class Stage2Offsets:
    """Stage 2 (emotalker.core.models.emotion_deformer) applied to B frames of Stage 1 Gaussians.

    Per frame: the mesh cue dM of the frame's FLAME params (batched over the B
    frames), the conditioning (emotion weights, intensity, blink, the frame's
    audio window `inputs.extras["audio"]` [B, Da], the camera code
    `inputs.extras["camera"]` [3] or None for the training mean), then the
    deformer's offsets on the face Gaussians. Intensity 0 leaves Stage 1 as is.
    """

    def __init__(self, deformer, stage1):
        self.deformer, self.stage1 = deformer, stage1

    @classmethod
    def open(cls, bundle: AvatarBundle, stage1, device: Any = "cpu") -> "Stage2Offsets":
        from emotalker.core.models.emotion_deformer import EmotionDeformer

        deformer, _ = EmotionDeformer.load(bundle.stage_path("emotion"), device=device)
        if deformer.cfg.n_gaussians != stage1.n_gaussians:
            raise InputError(bundle.stage_path("emotion"), f"Stage 2 was trained for {deformer.cfg.n_gaussians} face "
                             f"Gaussians but this avatar's Stage 1 has {stage1.n_gaussians}; retrain `emotalker train emotion`")
        return cls(deformer.eval().requires_grad_(False), stage1)

    def __call__(self, batch, inputs: FrameInputs) -> None:
        """Add the offsets to the face Gaussians of `batch` (a blendshapes.FrameBatch of inputs' B frames), in place."""
        from emotalker.core.models.emotion_deformer import EmotionInputs, apply_offsets_in_place, mesh_cue

        audio, camera = inputs.extras.get("audio"), inputs.extras.get("camera")
        if audio is None:
            raise ValueError("Stage 2 needs each frame's audio window in inputs.extras['audio']")
        active = [b for b in range(batch.means.shape[0]) if float(inputs.intensity[b]) > 0.0]
        if not active:
            return
        dM = mesh_cue(self.stage1, inputs.params)  # [B, N, 3]
        for b in active:
            cond = EmotionInputs(inputs.emotion[b], float(inputs.intensity[b]), float(inputs.blink[b]), audio[b], camera)
            apply_offsets_in_place(batch, b, self.deformer.offsets(dM[b], cond))


class FrameProducer:
    """`produce(frame)` for the frame loop: the Gaussians of one timeline frame, `chunk` frames evaluated at once.

    curves: FlameCurves covering every frame asked for; emotion [T,8], intensity [T],
    blink [T]: the track values per curve row; audio [T, Da]: each row's audio
    window and camera [3]: the camera code (both for Stage 2; None without it).
    Only the current chunk is kept.

    Chunks are fixed blocks of curve rows (rows 0..chunk-1, chunk..2*chunk-1, ...),
    whatever the frame range and whichever frames a resumed run still needs:
    batched matrix products round differently for different batch sizes, so a
    frame must always be evaluated in the same batch for a resumed or partial bake
    to write byte-identical files.
    """

    def __init__(self, evaluator: AvatarEvaluator, curves: FlameCurves, emotion: np.ndarray, intensity: np.ndarray,
                 blink: np.ndarray, chunk: int = 8, device: Any = "cpu", audio: np.ndarray | None = None,
                 camera: Any = None):
        self.evaluator, self.curves = evaluator, curves
        self.emotion, self.intensity, self.blink = emotion, intensity, blink
        self.audio, self.camera = audio, camera
        self.chunk = max(1, int(chunk))
        self.device = device
        self._block: int | None = None
        self._cached: dict[int, Any] = {}

    def inputs(self, frames: list[int]) -> FrameInputs:
        """The FrameInputs of timeline `frames` (within the curves)."""
        import torch

        from emotalker.core.rig.flame import FlameParams

        rows = self.curves.rows(np.asarray(frames))
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a[rows]), dtype=torch.float32, device=self.device)  # noqa: E731
        c = self.curves
        params = FlameParams(expr=t(c.expr), jaw=t(c.jaw), neck=t(c.neck), eyes=t(c.eyes), eyelids=t(c.eyelids))
        extras = {"camera": self.camera}
        if self.audio is not None:
            extras["audio"] = t(self.audio)
        return FrameInputs(params, t(self.emotion), t(self.intensity), t(self.blink), np.asarray(frames), extras)

    def __call__(self, frame: int):
        """The Gaussians (emotalker.core.render.gaussians.Gaussians) of timeline `frame`."""
        c = self.curves
        if not c.frame_start <= frame <= c.frame_end:
            raise ValueError(f"frame {frame} is outside the curves' frames {c.frame_start}..{c.frame_end}")
        block = (frame - c.frame_start) // self.chunk
        if block != self._block:
            first = c.frame_start + block * self.chunk
            todo = list(range(first, min(first + self.chunk, c.frame_end + 1)))
            self._cached = dict(zip(todo, self.evaluator.evaluate(self.inputs(todo))))  # drops the previous block
            self._block = block
        return self._cached[frame]


def audio_rows(samples: np.ndarray, fps: float, features, frames: np.ndarray) -> np.ndarray:
    """Stage 2's audio window of each timeline frame (frame 1 = audio start) -> [len(frames), Da] float32.

    samples [S] at 16 kHz; frames past either end of the audio take the nearest frame's window.
    """
    from emotalker.core.audio.waveform import duration_frames
    from emotalker.core.datasets.emotion_frames import audio_windows

    n_audio = duration_frames(len(samples), fps)
    windows = audio_windows(samples, fps, n_audio, features)
    return np.ascontiguousarray(windows[np.clip(np.asarray(frames) - 1, 0, n_audio - 1)])


def camera_code(viewmat: np.ndarray):
    """Stage 2's camera code [3] (torch) of a world-to-camera viewmat [4,4]."""
    import torch

    from emotalker.core.models.emotion_deformer import camera_code as code

    return code(torch.as_tensor(np.asarray(viewmat), dtype=torch.float32))

