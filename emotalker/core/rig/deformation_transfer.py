"""Per-triangle deformation gradients (Sumner and Popovic 2004) and their rotation parts.

Each triangle gets a fourth vertex at centroid + n / sqrt(|n|), so that the
affine map taking the rest triangle to the deformed one is unique:
Q = V' V^-1 with V = [v1 - v0, v2 - v0, v3 - v0], and b = v0' - Q v0.
Points on the triangle map exactly onto the deformed triangle; points off it
move as the triangle's local frame does. The polar (rotation) part of Q turns
Gaussian orientations.

Everything is numpy float64: it runs once, at initialisation.
"""

from __future__ import annotations

import numpy as np


def triangle_frames(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """verts [..., V, 3], faces [F,3] -> frames [..., F, 3, 3] with columns (e1, e2, n / sqrt|n|)."""
    v0, v1, v2 = (verts[..., faces[:, i], :] for i in range(3))
    e1, e2 = v1 - v0, v2 - v0
    n = np.cross(e1, e2)
    n = n / np.sqrt(np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-30))
    return np.stack([e1, e2, n], -1)


def deformation_gradients(rest: np.ndarray, deformed: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Affine maps x -> Q x + b per triangle.

    rest [V,3], deformed [..., V,3], faces [F,3] -> Q [..., F,3,3], b [..., F,3].
    Degenerate rest triangles (no inverse) get Q = I and b = the mean displacement.
    """
    rest = np.asarray(rest, np.float64)
    deformed = np.asarray(deformed, np.float64)
    Vr = triangle_frames(rest, faces)  # [F,3,3]
    Vd = triangle_frames(deformed, faces)
    det = np.linalg.det(Vr)
    ok = np.abs(det) > 1e-18
    Vr_inv = np.zeros_like(Vr)
    Vr_inv[ok] = np.linalg.inv(Vr[ok])
    Q = Vd @ Vr_inv
    eye = np.eye(3)
    Q[..., ~ok, :, :] = eye
    v0 = rest[faces[:, 0]]
    b = deformed[..., faces[:, 0], :] - np.einsum("...fij,fj->...fi", Q, v0)
    mean_disp = (deformed[..., faces, :] - rest[faces]).mean(-2)
    b[..., ~ok, :] = mean_disp[..., ~ok, :]
    return Q, b


def _inverse_transpose(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M^-T, det M) for stacked 3x3 matrices, by cofactors (much faster than batched LAPACK)."""
    r0, r1, r2 = M[..., 0, :], M[..., 1, :], M[..., 2, :]
    cof = np.stack([np.cross(r1, r2), np.cross(r2, r0), np.cross(r0, r1)], -2)
    det = (r0 * cof[..., 0, :]).sum(-1)
    return cof / det[..., None, None], det


def polar_rotation(Q: np.ndarray, iterations: int = 20) -> np.ndarray:
    """The rotation of the polar decomposition Q = R S. Q [..., 3, 3] -> R [..., 3, 3], det R = +1.

    Newton's iteration R <- (R + R^-T) / 2 converges quadratically from Q for
    the near-rotations of expression blendshapes, a few cross products a step
    (a million SVDs take tens of seconds); matrices with det <= 0 or that have
    not converged fall back to the SVD.
    """
    Q = np.asarray(Q, np.float64)
    scale = np.maximum(np.abs(Q).max((-1, -2), keepdims=True), 1e-30)
    R = Q / scale  # the polar rotation does not change with a positive scale
    _, det = _inverse_transpose(R)
    good = det > 1e-9
    for _ in range(iterations):
        inv_t, det = _inverse_transpose(R)
        good &= det > 1e-12
        nxt = np.where(good[..., None, None], 0.5 * (R + inv_t), R)
        step = np.abs(nxt - R).max()
        R = nxt
        if step < 1e-12:
            break
    ortho = np.abs(R @ np.swapaxes(R, -1, -2) - np.eye(3)).max((-1, -2)) < 1e-9
    bad = ~(good & ortho)
    if bad.any():
        U, _, Vt = np.linalg.svd(Q[bad])
        d = np.sign(np.linalg.det(U @ Vt))
        D = np.ones(U.shape[:-1])
        D[..., 2] = d
        R[bad] = (U * D[..., None, :]) @ Vt
    return R


def rotation_quats(Q: np.ndarray) -> np.ndarray:
    """Quaternions [..., 4] wxyz (w >= 0) of the polar rotations of Q [..., 3, 3]."""
    import torch

    from emotalker.core.base.quaternion import matrix_to_quat

    return matrix_to_quat(torch.from_numpy(polar_rotation(Q))).numpy()
