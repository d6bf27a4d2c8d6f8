"""Image quality metrics with optional masks: PSNR, SSIM and L1 on [H, W, 3] images in 0..1."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from emotalker.core.datasets.frames import Frame


def _weights(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """mask [H,W] or [H,W,1] (bool or 0..1) -> weights [H,W]; all ones when None."""
    if mask is None:
        return torch.ones(like.shape[:-1], dtype=like.dtype, device=like.device)
    m = mask.to(like.dtype)
    return m[..., 0] if m.ndim == like.ndim else m


def _gaussian_window(size: int, sigma: float, dtype, device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    w = torch.exp(-x * x / (2 * sigma * sigma))
    return w / w.sum()


def ssim_map(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM [..., H, W] (mean over channels) with a Gaussian window, as in 3DGS.

    pred, target [..., H, W, C]; statistics by a separable blur with zero padding.
    """
    shape = pred.shape
    H, W, C = shape[-3:]
    x = pred.reshape(-1, H, W, C).permute(0, 3, 1, 2)
    y = target.reshape(-1, H, W, C).permute(0, 3, 1, 2)
    g = _gaussian_window(window, sigma, x.dtype, x.device)
    # Blur the five statistics in one grouped convolution a direction (5 * C channels).
    stats = torch.cat([x, y, x * x, y * y, x * y], 1)
    ch = stats.shape[1]
    stats = F.conv2d(stats, g.view(1, 1, 1, -1).expand(ch, 1, 1, -1), padding=(0, window // 2), groups=ch)
    stats = F.conv2d(stats, g.view(1, 1, -1, 1).expand(ch, 1, -1, 1), padding=(window // 2, 0), groups=ch)
    mu_x, mu_y, bxx, byy, bxy = stats.split(C, 1)
    sxx = bxx - mu_x * mu_x
    syy = byy - mu_y * mu_y
    sxy = bxy - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2))
    return s.mean(1).reshape(*shape[:-3], H, W)


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
