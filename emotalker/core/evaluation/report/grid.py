"""The emotion x intensity grid of the report: one frame of a held-out clip's audio rendered at every
emotion (rows) and intensity 1..3 (columns), driven by A2E when the avatar has it, else by the tracking."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from emotalker.core.base.emotions import EMOTIONS, one_hot
from emotalker.core.evaluation.report.heldout import Scene, to_uint8

LEVELS = (1.0, 2.0, 3.0)


def report_clip(dataset) -> str | None:
    """The held-out clip the grid and the video use: a clip held out at an untrained intensity, else the
    test split's most intense emotional clip, else its first clip; None without a test split."""
    test = dataset.split("test")
    if not test:
        return None
    held = [c for c in test if c.held_out]
    if held:
        return held[0].id
    emotional = [c for c in test if c.emotion != "neutral"]
    return max(emotional, key=lambda c: c.intensity).id if emotional else test[0].id


def a2e_frame_params(scene: Scene, clip_id: str, t: int, weights: np.ndarray, level: float, like):
    """Frame t's FLAME parameters from A2E on the clip's audio at (weights, level); eyes and eyelids from `like`."""
    from emotalker.core.audio.waveform import load_audio
    from emotalker.core.models.a2e import infer_curves
    from emotalker.core.rig.flame import FlameParams

    ds = scene.dataset
    curves = infer_curves(scene.a2e, load_audio(ds.audio_path(clip_id)), weights, level, ds.fps, scene.device)
    k = min(t, len(curves["expr"]) - 1)
    f = lambda a: torch.as_tensor(a[k:k + 1], dtype=torch.float32, device=like.expr.device)  # noqa: E731
    return FlameParams(expr=f(curves["expr"]), jaw=f(curves["jaw"]), neck=f(curves["neck"]),
                       eyes=like.eyes, eyelids=like.eyelids)


@torch.no_grad()
def render_grid(scene: Scene, clip_id: str) -> list[list[np.ndarray]]:
    """uint8 RGB tiles [emotion][level] of the clip's middle frame."""
    from emotalker.core.datasets.emotion_frames import EmotionFrames
    from emotalker.core.models.avatar import render_avatar

    ds = scene.dataset
    frames = EmotionFrames(ds, [clip_id], scene.features, scene.resolution, scene.background, scene.device)
    frame, conditions = frames.get(ds.n_frames(clip_id) // 2)
    rows = []
    for name in EMOTIONS:
        weights, tiles = one_hot(name), []
        for level in LEVELS:
            params = conditions.params
            if scene.a2e is not None:
                params = a2e_frame_params(scene, clip_id, frame.t, weights, level, params)
            x = replace(conditions, params=params, emotion=torch.from_numpy(weights)[None],
                        intensity=torch.tensor([level], dtype=torch.float64))
            g = scene.avatar.evaluate(x).unbind()[0]
            tiles.append(to_uint8(render_avatar(g, frame.camera, frames.background).rgb[0]))
        rows.append(tiles)
    return rows
