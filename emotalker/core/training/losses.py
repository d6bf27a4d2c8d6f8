"""Image losses for training: L1 and SSIM / D-SSIM on [..., H, W, 3] images in 0..1."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error; pred, target [..., H, W, C]."""
    return (pred - target).abs().mean()


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


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of [..., H, W, C] images."""
    return ssim_map(pred, target).mean()


def dssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Structural dissimilarity (1 - SSIM) / 2, the D-SSIM term of 3DGS-style losses."""
    return (1 - ssim(pred, target)) / 2
