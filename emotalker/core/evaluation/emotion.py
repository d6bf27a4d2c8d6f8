"""Evaluating Stage 1 + Stage 2 on emotional clips, driven by the tracking or by A2E from the audio."""

from __future__ import annotations

import torch

from emotalker.core.models.avatar import Avatar, render_avatar
from emotalker.core.datasets.emotion_frames import EmotionFrames
from emotalker.core.evaluation.metrics import mean_metrics


@torch.no_grad()
def render_emotion_frame(avatar: Avatar, frames: EmotionFrames, i: int, backend: str = "auto"):
    """(frame, rgb [H,W,3], alpha [H,W,1]) of frame i (Stage 1 alone for an avatar without Stage 2).

    The differentiable path under no_grad: this also runs on models still being trained.
    """
    frame, conditions = frames.get(i)
    g = avatar.evaluate_differentiable(conditions).unbind()[0]
    out = render_avatar(g, frame.camera, frames.background, backend)
    return frame, out.rgb[0].clamp(0, 1), out.alpha[0]


@torch.no_grad()
def evaluate_emotion(avatar: Avatar, frames: EmotionFrames, indices=None, backend: str = "auto") -> dict[str, float]:
    """Mean psnr/ssim/l1 over frames on the whole image and (`head_*`) inside the union of the
    ground-truth mask and the rendered alpha; an avatar without Stage 2: Stage 1 alone (`--no-emotion`)."""
    indices = range(len(frames)) if indices is None else indices
    return mean_metrics(render_emotion_frame(avatar, frames, i, backend) for i in indices)


def clip_groups(dataset, split: str = "test") -> dict[str, list[str]]:
    """Clip ids of a split grouped for reporting: `intensity3` (emotional clips at level 3),
    `trained_levels` (emotional clips at levels 1-3), `heldout_intensity` (the clips marked
    held_out, at levels between MEAD's) and `all`."""
    clips = dataset.split(split)
    emotional = [c for c in clips if c.emotion != "neutral"]
    return {
        "intensity3": [c.id for c in emotional if not c.held_out and c.intensity == 3.0],
        "trained_levels": [c.id for c in emotional if not c.held_out and c.intensity in (1.0, 2.0, 3.0)],
        "heldout_intensity": [c.id for c in emotional if c.held_out],
        "all": [c.id for c in clips],
    }
