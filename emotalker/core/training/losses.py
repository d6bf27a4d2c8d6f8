"""Image losses for training: L1 and SSIM / D-SSIM on [..., H, W, 3] images in 0..1."""

from __future__ import annotations

import torch

from emotalker.core.evaluation.metrics import ssim_map


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error; pred, target [..., H, W, C]."""
    return (pred - target).abs().mean()


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of [..., H, W, C] images."""
    return ssim_map(pred, target).mean()


def dssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Structural dissimilarity (1 - SSIM) / 2, the D-SSIM term of 3DGS-style losses."""
    return (1 - ssim(pred, target)) / 2
