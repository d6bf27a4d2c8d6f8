"""Rendering and evaluating a Stage 1 avatar on tracked frames: whole image, head and mouth metrics."""

from __future__ import annotations

import numpy as np
import torch

from emotalker.core.models.avatar import render_avatar
from emotalker.core.models.blendshapes import GaussianBlendshapes, JAW_JOINT
from emotalker.core.datasets.frames import Frame, FrameSet
from emotalker.core.evaluation.metrics import mean_metrics

MOUTH_REGIONS = ("lips", "mouth_interior", "teeth")


def mouth_vertices(model: GaussianBlendshapes) -> np.ndarray:
    """Vertex ids that outline the mouth: the rig's lips / mouth_interior / teeth regions; for a rig
    without them, the vertices shared between the head and the jaw (jaw weight 0.3-0.7) in the
    front half of the head."""
    fm = model.flame_model
    ids = [fm.regions[r] for r in MOUTH_REGIONS if r in fm.regions and len(fm.regions[r])]
    if ids:
        return np.unique(np.concatenate(ids))
    jaw = fm.weights[:, JAW_JOINT]
    z = fm.v_template[:, 2]
    return np.flatnonzero((jaw > 0.3) & (jaw < 0.7) & (z > np.median(z)))


def mouth_box(model: GaussianBlendshapes, frame: Frame, width: int, height: int, pad: float = 0.25) -> torch.Tensor:
    """A boolean mask [H,W] of the projected mouth vertices' bounding box, padded by `pad` of its size."""
    ids = torch.as_tensor(mouth_vertices(model))
    with torch.no_grad():
        verts, _ = model.rig()(frame.params)
    p = verts[0, ids]
    cam = (frame.viewmat[0, :3, :3] @ p.T).T + frame.viewmat[0, :3, 3]
    uv = (frame.K[0] @ cam.T).T
    uv = uv[:, :2] / uv[:, 2:].clamp_min(1e-6)
    lo, hi = uv.min(0).values, uv.max(0).values
    size = hi - lo
    lo, hi = lo - pad * size, hi + pad * size
    ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    return (xs >= lo[0]) & (xs <= hi[0]) & (ys >= lo[1]) & (ys <= hi[1])


@torch.no_grad()
def render_neutral_frame(model: GaussianBlendshapes, frames: FrameSet, i: int,
                         backend: str = "auto") -> tuple[Frame, torch.Tensor, torch.Tensor]:
    """(frame, rendered rgb [H,W,3], alpha [H,W,1]) of Stage 1 alone for frame i of `frames`."""
    frame = frames.get(i)
    g = model(frame.params)[0]
    out = render_avatar(g, frame.camera, frames.background, backend)
    return frame, out.rgb[0].clamp(0, 1), out.alpha[0]


@torch.no_grad()
def evaluate(model: GaussianBlendshapes, frames: FrameSet, indices=None, backend: str = "auto") -> dict[str, float]:
    """Mean metrics over frames (metrics.mean_metrics): psnr/ssim/l1 on the whole image, `head_*` and
    `mouth_*` inside the projected mouth box."""
    indices = range(len(frames)) if indices is None else indices

    def mouth(frame: Frame) -> dict[str, torch.Tensor | None]:
        box = mouth_box(model, frame, frames.width, frames.height)
        return {"mouth_": box if box.any() else None}

    return mean_metrics((render_neutral_frame(model, frames, i, backend) for i in indices), mouth)
