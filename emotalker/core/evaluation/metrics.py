"""Image quality metrics with optional masks: PSNR, SSIM and L1 on [H, W, 3] images in 0..1."""

from __future__ import annotations

import math

import torch

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
