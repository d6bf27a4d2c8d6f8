"""Lip geometry through the rig, and the A2E quality figures (training report and benchmark).

Lip-vertex error is measured the way lip-sync work measures it: the lip
vertices posed by expression and jaw with the head at rest (neck zero), so head
sway, which audio barely determines, does not swamp mouth accuracy. Neck is
judged on its own by the parameter loss.
"""

from __future__ import annotations

import numpy as np
import torch

from emotalker.core.rig.flame import FlameModel, FlameParams, FlameRig
from emotalker.core.rig.flame_subset import vertex_subset


class LipRig:
    """Poses only the lip vertices of a rig: lips(expr [N,E], jaw [N,3]) -> [N,K,3] metres."""

    def __init__(self, model: FlameModel, lip_idx: np.ndarray, device="cpu"):
        self.n = len(lip_idx)
        self.rig = FlameRig(vertex_subset(model, lip_idx), device)

    def __call__(self, expr, jaw):
        verts, _ = self.rig(FlameParams(expr=expr, jaw=jaw))
        return verts[:, : self.n]


def lip_vertex_error_mm(lips: LipRig, expr_a, jaw_a, expr_b, jaw_b, chunk: int = 4096) -> float:
    """Mean L2 distance (mm) between lip vertices posed by (expr_a, jaw_a) and (expr_b, jaw_b), each [N, E] / [N, 3]."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(expr_a), chunk):
            s = slice(i, i + chunk)
            d = (lips(expr_a[s], jaw_a[s]) - lips(expr_b[s], jaw_b[s])).norm(dim=-1)
            total += float(d.sum()) * 1000.0
            count += d.numel()
    return total / max(count, 1)


def jaw_opening(jaw):
    """jaw [N, 3] axis-angle -> opening [N]: the rotation about x, FLAME's jaw-opening axis."""
    return jaw[..., 0]


def pearson(a, b) -> float:
    """Pearson correlation of two 1-D arrays (0 when either is constant)."""
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def cosine(a, b) -> float:
    """Cosine similarity of two vectors (0 when either is zero)."""
    a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else 0.0
