"""Tracked frames of a dataset at a working resolution, ready for training and evaluation.

A `FrameSet` lists (clip, frame) pairs and hands out one frame at a time as
torch tensors: the image composited over a background, its mask, the frame's
FLAME parameters and its camera with intrinsics scaled to the working size.
Resized images are cached as uint8, so a few thousand 256^2 frames fit in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from emotalker.core.render.camera import Camera
from emotalker.core.rig.flame import FlameParams


@dataclass
class Frame:
    """One tracked frame: image [H,W,3] (over the background), mask [H,W,1], params (batch of 1),
    K [1,3,3], viewmat [1,4,4], and where it came from."""

    clip_id: str
    t: int
    image: torch.Tensor
    mask: torch.Tensor
    params: FlameParams
    K: torch.Tensor
    viewmat: torch.Tensor

    @property
    def camera(self) -> Camera:
        """The frame's camera at the image's size (its tensors, on their device)."""
        return Camera(self.viewmat[0], self.K[0], int(self.image.shape[1]), int(self.image.shape[0]))


def working_size(width: int, height: int, resolution: int | None) -> tuple[int, int]:
    """(w, h) with the longer side scaled to `resolution` (the dataset's own size when None)."""
    if not resolution:
        return width, height
    s = resolution / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def frame_params(tracking, t: int | slice, device="cpu") -> FlameParams:
    """FLAME parameters of frame(s) `t` of a Tracking as a FlameParams batch."""
    idx = [t] if isinstance(t, int) else t
    g = lambda a: torch.as_tensor(np.asarray(a[idx]), dtype=torch.float32, device=device)  # noqa: E731
    return FlameParams(expr=g(tracking.expr), jaw=g(tracking.jaw), neck=g(tracking.neck), eyes=g(tracking.eyes),
                       eyelids=g(tracking.eyelids))


class FrameSet:
    """Frames of some clips of a Dataset at (width, height); `len`, `refs`, `get(i)`."""

    def __init__(self, dataset, clip_ids: list[str], resolution: int | None = None,
                 background=(1.0, 1.0, 1.0), device="cpu", stride: int = 1, cache_limit: int = 4000):
        self.dataset = dataset
        self.width, self.height = working_size(dataset.width, dataset.height, resolution)
        self.background = torch.tensor(background, dtype=torch.float32, device=device)
        self.device = torch.device(device)
        self.refs = [(c, t) for c in clip_ids for t in range(0, dataset.n_frames(c), stride)]
        self._cache: dict[tuple[str, int], torch.Tensor] = {}
        self.cache_limit = cache_limit  # frames kept (uint8); 4000 at 256^2 is about 1 GB

    def __len__(self) -> int:
        return len(self.refs)

    def _rgba(self, clip_id: str, t: int) -> torch.Tensor:
        key = (clip_id, t)
        img = self._cache.get(key)
        if img is None:
            rgba = torch.from_numpy(np.ascontiguousarray(self.dataset.frame(clip_id, t)))
            if rgba.shape[:2] != (self.height, self.width):
                # Area averaging: an antialiased downscale of premultiplied colour.
                pre = torch.cat([rgba[..., :3] * rgba[..., 3:], rgba[..., 3:]], -1)
                pre = F.interpolate(pre.permute(2, 0, 1)[None], size=(self.height, self.width), mode="area")[0].permute(1, 2, 0)
                a = pre[..., 3:]
                rgba = torch.cat([pre[..., :3] / a.clamp_min(1e-6), a], -1)
            img = (rgba.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
            if len(self._cache) < self.cache_limit:
                self._cache[key] = img
        return img.to(self.device).float() / 255

    def get(self, i: int) -> Frame:
        clip_id, t = self.refs[i]
        rgba = self._rgba(clip_id, t)
        mask = rgba[..., 3:]
        image = rgba[..., :3] * mask + self.background * (1 - mask)
        tr = self.dataset.tracking(clip_id)
        K = torch.as_tensor(tr.K[t], dtype=torch.float32, device=self.device).clone()
        K[0] *= self.width / self.dataset.width
        K[1] *= self.height / self.dataset.height
        viewmat = torch.as_tensor(tr.viewmat[t], dtype=torch.float32, device=self.device)
        return Frame(clip_id, t, image, mask, frame_params(tr, t, self.device), K[None], viewmat[None])
