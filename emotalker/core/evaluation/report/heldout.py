"""Held-out scores of an avatar for the report: PSNR/SSIM per stage and per emotion, and one frame of each
emotion rendered beside its ground truth.

Bounded whatever the dataset's size: at most `clips_per_emotion` test clips an emotion and `frames`
evenly spaced frames over them, each rendered once per stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from emotalker.core.base.emotions import EMOTIONS
from emotalker.core.evaluation.metrics import mean_metrics

# What each column of the table renders: Stage 1 alone on the tracking, Stage 1 + 2 on the tracking,
# Stage 1 + 2 driven by A2E from the clip's audio.
STAGES = {"stage1": "Stage 1 (tracked)", "stage2": "Stage 1 + 2 (tracked)", "a2e": "A2E-driven (audio)"}


@dataclass
class Scene:
    """What the held-out renders need: the dataset, the avatar (Stage 2 when trained), the bundle's A2E
    (or None), the audio features Stage 2 / A2E read, the working resolution, background and device."""

    dataset: object
    avatar: object
    a2e: object | None
    features: object | None
    resolution: int | None
    background: tuple
    device: object


@dataclass
class EmotionScores:
    emotion: str
    clips: list[str]
    frames: int
    scores: dict[str, dict[str, float]]
    """{stage key: {"psnr", "ssim", ...}} for the stages this avatar has."""
    sample: dict[str, np.ndarray] = field(default_factory=dict)
    """{"truth" | stage key: uint8 [H,W,3]} of the group's middle frame."""


def heldout_clips_by_emotion(dataset, clips_per_emotion: int) -> dict[str, list[str]]:
    """{emotion: up to `clips_per_emotion` test clip ids, evenly chosen}, in EMOTIONS order."""
    groups: dict[str, list[str]] = {}
    for clip in dataset.split("test"):
        groups.setdefault(clip.emotion, []).append(clip.id)
    order = [e for e in EMOTIONS if e in groups] + sorted(e for e in groups if e not in EMOTIONS)
    return {e: _evenly(groups[e], clips_per_emotion) for e in order}


def _evenly(items: list, n: int) -> list:
    """At most n items of `items`, evenly spaced, first and last included."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))]


def stage_frames(scene: Scene, clip_ids: list[str]) -> dict[str, object]:
    """{stage key: a frame source (FrameSet / EmotionFrames)} for the stages the avatar can render."""
    from emotalker.core.datasets.emotion_frames import EmotionFrames, a2e_params
    from emotalker.core.datasets.frames import FrameSet

    ds, dev, res, bg = scene.dataset, scene.device, scene.resolution, scene.background
    sources: dict[str, object] = {"stage1": FrameSet(ds, clip_ids, res, bg, dev)}
    if scene.avatar.uses_emotion:
        sources["stage2"] = EmotionFrames(ds, clip_ids, scene.features, res, bg, dev)
    if scene.a2e is not None:
        override = {c: a2e_params(scene.a2e, ds, c, dev) for c in clip_ids}
        sources["a2e"] = EmotionFrames(ds, clip_ids, scene.features, res, bg, dev, params_override=override)
    return sources


def render_stage(scene: Scene, stage: str, source, i: int):
    """(frame, rgb [H,W,3], alpha [H,W,1]) of frame i for one column of the table."""
    from emotalker.core.evaluation.emotion import render_emotion_frame
    from emotalker.core.evaluation.neutral import render_neutral_frame

    if stage == "stage1":
        return render_neutral_frame(scene.avatar.stage1, source, i)
    return render_emotion_frame(scene.avatar, source, i)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def score_emotion(scene: Scene, emotion: str, clip_ids: list[str], frames: int) -> EmotionScores:
    """Every stage's mean metrics over `frames` evenly spaced frames of the clips, and the middle frame's images."""
    sources = stage_frames(scene, clip_ids)
    n = len(sources["stage1"])
    idx = np.unique(np.linspace(0, n - 1, min(frames, n)).round().astype(int)).tolist()
    keep = idx[len(idx) // 2]
    sample: dict[str, np.ndarray] = {}
    scores = {}
    for stage, source in sources.items():
        def rendered(stage=stage, source=source):
            for i in idx:
                frame, rgb, alpha = render_stage(scene, stage, source, i)
                if i == keep:
                    sample.setdefault("truth", to_uint8(frame.image))
                    sample[stage] = to_uint8(rgb)
                yield frame, rgb, alpha
        scores[stage] = mean_metrics(rendered())
    return EmotionScores(emotion, clip_ids, len(idx), scores, sample)


def overall(rows: list[EmotionScores]) -> dict[str, dict[str, float]]:
    """Per stage, the frame-weighted mean of every row's psnr and ssim."""
    total = sum(r.frames for r in rows)
    out: dict[str, dict[str, float]] = {}
    for stage in rows[0].scores if rows else ():
        out[stage] = {k: sum(r.scores[stage][k] * r.frames for r in rows) / total for k in ("psnr", "ssim")}
    return out


def score_heldout(scene: Scene, frames: int = 8, clips_per_emotion: int = 2) -> list[EmotionScores]:
    """One EmotionScores an emotion of the test split (none when the split is empty)."""
    groups = heldout_clips_by_emotion(scene.dataset, clips_per_emotion)
    return [score_emotion(scene, e, ids, frames) for e, ids in groups.items()]
