"""Tracked frames with everything Stage 2 conditions on: audio window, emotion, intensity, blink, camera.

`EmotionFrames` wraps a `FrameSet` (images, masks, FLAME parameters, cameras)
and adds, per clip, the audio feature windows (the A2E features, one window a
frame), the clip's emotion weights and intensity and the tracked blink values.
The FLAME parameters may come from the tracking (self-driven) or from an A2E
model run on the clip's audio with the clip's emotion (`a2e_params`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from emotalker.core.audio.features import FeatureConfig, frame_audio_windows
from emotalker.core.models.avatar import FrameConditions
from emotalker.core.models.emotion_deformer import camera_code
from emotalker.core.rig.flame import FlameParams
from emotalker.core.datasets.frames import Frame, FrameSet


@dataclass
class ClipConditions:
    """One clip's per-frame conditions: audio [T, Da], blink [T], weights [8], intensity."""

    audio: np.ndarray
    blink: np.ndarray
    weights: np.ndarray
    intensity: float


def clip_conditions(dataset, clip_id: str, features: FeatureConfig) -> ClipConditions:
    """The conditions of one dataset clip (audio features computed from its audio.wav)."""
    from emotalker.core.audio.waveform import load_audio
    from emotalker.core.base.emotions import one_hot

    info = dataset.clip(clip_id)
    T = dataset.n_frames(clip_id)
    audio = frame_audio_windows(load_audio(dataset.audio_path(clip_id)), features, dataset.fps, np.arange(T))
    return ClipConditions(audio, dataset.tracking(clip_id).blink.astype(np.float32), one_hot(info.emotion),
                          float(info.intensity))


def a2e_params(a2e_model, dataset, clip_id: str, device="cpu") -> FlameParams:
    """FLAME parameters [T, ...] of a clip driven by A2E from its audio, emotion and intensity;
    eyes and eyelids (which A2E does not predict) from the tracking."""
    from emotalker.core.models.a2e import infer_curves
    from emotalker.core.audio.waveform import load_audio
    from emotalker.core.base.emotions import one_hot

    info = dataset.clip(clip_id)
    tr = dataset.tracking(clip_id)
    T = len(tr)
    curves = infer_curves(a2e_model, load_audio(dataset.audio_path(clip_id)), one_hot(info.emotion),
                          info.intensity, dataset.fps, device)

    def fit(a):  # A2E's frame count comes from the audio length; match the images'
        a = a[:T]
        return np.concatenate([a, np.repeat(a[-1:], T - len(a), 0)]) if len(a) < T else a

    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    return FlameParams(expr=t(fit(curves["expr"])), jaw=t(fit(curves["jaw"])), neck=t(fit(curves["neck"])),
                       eyes=t(tr.eyes), eyelids=t(tr.eyelids))


class EmotionFrames:
    """Frames of some clips with their Stage 2 conditions. `len`, `get(i) -> (Frame, FrameConditions of 1 frame)`.

    params_override: clip id -> FlameParams [T, ...] replacing the tracking's (A2E-driven evaluation).
    """

    def __init__(self, dataset, clip_ids: list[str], features: FeatureConfig, resolution: int | None = None,
                 background=(1.0, 1.0, 1.0), device="cpu", stride: int = 1, params_override: dict | None = None):
        self.frames = FrameSet(dataset, clip_ids, resolution, background, device, stride)
        self.dataset = dataset
        self.features = features
        self.conditions = {c: clip_conditions(dataset, c, features) for c in clip_ids}
        self.params_override = params_override or {}

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def width(self) -> int:
        return self.frames.width

    @property
    def height(self) -> int:
        return self.frames.height

    @property
    def background(self) -> torch.Tensor:
        return self.frames.background

    @property
    def refs(self) -> list[tuple[str, int]]:
        return self.frames.refs

    def get(self, i: int) -> tuple[Frame, FrameConditions]:
        frame = self.frames.get(i)
        clip_id, t = frame.clip_id, frame.t
        if clip_id in self.params_override:
            p = self.params_override[clip_id]
            frame.params = FlameParams(**{k: (None if v is None else v[t: t + 1].to(frame.image.device))
                                          for k, v in vars(p).items()})
        c = self.conditions[clip_id]
        # float64 intensity: the clip's value exactly, as Stage 2 reads it (a Python float).
        conditions = FrameConditions(frame.params, torch.from_numpy(c.weights)[None],
                                     torch.tensor([c.intensity], dtype=torch.float64), torch.from_numpy(c.blink[t: t + 1]),
                                     torch.from_numpy(c.audio[t: t + 1]), camera_code(frame.viewmat[0])[None])
        return frame, conditions

    def all_audio(self) -> np.ndarray:
        """Every frame's audio window stacked [sum T, Da] (for normalisation)."""
        return np.concatenate([c.audio for c in self.conditions.values()])

    def mean_camera(self) -> torch.Tensor:
        """Mean camera code [3] over every frame."""
        codes = [camera_code(self.dataset.tracking(c).viewmat) for c in self.conditions]
        return torch.cat(codes).mean(0)
