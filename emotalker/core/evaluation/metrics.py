"""Image quality metrics with optional masks: PSNR, SSIM and L1 on [H, W, 3] images in 0..1."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from emotalker.core.datasets.frames import Frame

from emotalker.core.training.losses import ssim_map


def _weights(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """mask [H,W] or [H,W,1] (bool or 0..1) -> weights [H,W]; all ones when None."""
    if mask is None:
        return torch.ones(like.shape[:-1], dtype=like.dtype, device=like.device)
    m = mask.to(like.dtype)
    return m[..., 0] if m.ndim == like.ndim else m


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB over the pixels of `mask` (all when None); pred, target [H,W,3]."""
    w = _weights(mask, pred)
    mse = float((((pred - target) ** 2).mean(-1) * w).sum() / w.sum().clamp_min(1e-12))
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean absolute error over the pixels of `mask`; pred, target [H,W,3]."""
    w = _weights(mask, pred)
    return float(((pred - target).abs().mean(-1) * w).sum() / w.sum().clamp_min(1e-12))


def ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean SSIM over the pixels of `mask` (SSIM computed on the whole image); [H,W,3]."""
    w = _weights(mask, pred)
    return float((ssim_map(pred, target) * w).sum() / w.sum().clamp_min(1e-12))


def image_metrics(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, float]:
    """{"psnr", "ssim", "l1"} over the pixels of `mask`."""
    return {"psnr": psnr(pred, target, mask), "ssim": ssim(pred, target, mask), "l1": l1(pred, target, mask)}


def mean_metrics(rendered: Iterable[tuple[Frame, torch.Tensor, torch.Tensor]],
                 regions: Callable[[Frame], dict[str, torch.Tensor | None]] | None = None) -> dict[str, float]:
    """Mean image_metrics over rendered frames, each (frame, rgb [H,W,3], alpha [H,W,1]): on the whole
    image, `head_*` inside the union of the ground-truth mask and the rendered alpha, and `<prefix>*`
    inside each mask of `regions(frame)` ({prefix: mask}; None: the whole image). Adds "frames"."""
    sums: dict[str, float] = {}
    n = 0
    for frame, rgb, alpha in rendered:
        head = (frame.mask[..., 0] > 0.5) | (alpha[..., 0] > 0.5)
        parts = {"": None, "head_": head, **(regions(frame) if regions else {})}
        for prefix, mask in parts.items():
            for k, v in image_metrics(rgb, frame.image, mask).items():
                sums[prefix + k] = sums.get(prefix + k, 0.0) + v
        n += 1
    return {k: v / max(n, 1) for k, v in sums.items()} | {"frames": n}
