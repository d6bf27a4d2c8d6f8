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
from emotalker.core.evaluation.metrics import psnr, ssim

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


def stage_conditions(frame):
    """FrameConditions of a tracked frame for Stage 1 alone (which reads only the FLAME parameters)."""
    from emotalker.core.base.emotions import one_hot
    from emotalker.core.models.avatar import FrameConditions

    zero = torch.zeros(1)
    return FrameConditions(frame.params, torch.from_numpy(one_hot("neutral"))[None], zero.double(), zero)


@torch.no_grad()
def render_stage(scene: Scene, stage: str, source, i: int):
    """(frame, rgb [H,W,3]) of frame i for one column of the table, through the bake's inference path
    (Avatar.evaluate: the compiled kernels, several times faster than the training path on a CPU)."""
    from emotalker.core.models.avatar import Avatar, render_avatar

    if stage == "stage1":
        frame = source.get(i)
        avatar, conditions = Avatar(scene.avatar.stage1), stage_conditions(frame)
    else:
        (frame, conditions), avatar = source.get(i), scene.avatar
    g = avatar.evaluate(conditions).unbind()[0]
    return frame, render_avatar(g, frame.camera, source.background).rgb[0].clamp(0, 1)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def score_emotion(scene: Scene, emotion: str, clip_ids: list[str], frames: int) -> EmotionScores:
    """Every stage's mean whole-image PSNR and SSIM over `frames` evenly spaced frames of the clips, and
    the middle frame's images."""
    sources = stage_frames(scene, clip_ids)
    n = len(sources["stage1"])
    idx = np.unique(np.linspace(0, n - 1, min(frames, n)).round().astype(int)).tolist()
    keep = idx[len(idx) // 2]
    sample: dict[str, np.ndarray] = {}
    scores = {}
    for stage, source in sources.items():
        sums = {"psnr": 0.0, "ssim": 0.0}
        for i in idx:
            frame, rgb = render_stage(scene, stage, source, i)
            sums["psnr"] += psnr(rgb, frame.image)
            sums["ssim"] += ssim(rgb, frame.image)
            if i == keep:
                sample.setdefault("truth", to_uint8(frame.image))
                sample[stage] = to_uint8(rgb)
        scores[stage] = {k: v / len(idx) for k, v in sums.items()}
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
