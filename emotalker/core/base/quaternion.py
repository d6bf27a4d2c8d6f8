"""Unit quaternions (wxyz, as the Gaussians store them) in torch: products and matrix conversions."""

from __future__ import annotations

import torch


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product a * b (rotate by b, then by a). a, b [..., 4] wxyz -> [..., 4]."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], -1)


def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Quaternions [..., 4] wxyz (normalised here) -> rotation matrices [..., 3, 3]."""
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(*q.shape[:-1], 3, 3)


def matrix_to_quat(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] -> unit quaternions [..., 4] wxyz with w >= 0.

    Shepperd's method: of the four algebraic forms, use the best-conditioned one.
    """
    m00, m11, m22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    r21, r12, r02, r20, r10, r01 = R[..., 2, 1], R[..., 1, 2], R[..., 0, 2], R[..., 2, 0], R[..., 1, 0], R[..., 0, 1]
    cands = torch.stack([
        torch.stack([1 + m00 + m11 + m22, r21 - r12, r02 - r20, r10 - r01], -1),
        torch.stack([r21 - r12, 1 + m00 - m11 - m22, r01 + r10, r02 + r20], -1),
        torch.stack([r02 - r20, r01 + r10, 1 - m00 + m11 - m22, r12 + r21], -1),
        torch.stack([r10 - r01, r02 + r20, r12 + r21, 1 - m00 - m11 + m22], -1),
    ], -2)  # [..., 4, 4]
    diag = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = diag.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    q = torch.nn.functional.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)
