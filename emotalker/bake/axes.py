"""Up-axis conversion of raw Gaussians for export: FLAME's +Y up to Blender/Unreal-style +Z up.

The z-up conversion is the rotation by +90 degrees about +X:

    (x, y, z) -> (x, -z, y)      R = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]

so FLAME's up (+Y) becomes +Z and the face's forward (+Z) becomes -Y, the way a
character faces the front view in Blender. A rigid rotation of a 3DGS scene
must turn three things: positions (R p), orientations (the wxyz quaternion
q_R * q with q_R = (cos 45deg, sin 45deg, 0, 0)) and the view-dependent colour
(each SH band l >= 1 mixes by that band's rotation matrix, so that the colour
seen along R d equals the colour seen before along d). Scales, opacities and
the DC colour do not change.
"""

from __future__ import annotations

import numpy as np
import torch

from emotalker.core.base.quaternion import quat_multiply as core_quat_multiply
from emotalker.core.render.sh import sh_basis as render_sh_basis

UP_AXES = ("y", "z")
Z_UP_ROTATION = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
Z_UP_QUAT = np.array([np.sqrt(0.5), np.sqrt(0.5), 0.0, 0.0])  # wxyz of Z_UP_ROTATION


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """wxyz Hamilton product (rotation a after b) on numpy arrays, through the core's one implementation."""
    return core_quat_multiply(torch.from_numpy(np.asarray(a)), torch.from_numpy(np.asarray(b))).numpy()


def sh_basis(dirs: np.ndarray, degree: int) -> np.ndarray:
    """The renderers' real SH basis at unit directions dirs [M, 3] -> [M, (degree+1)^2] (numpy, float64)."""
    return render_sh_basis(degree, torch.from_numpy(np.asarray(dirs, dtype=np.float64))).numpy()


def sh_rotation(rotation: np.ndarray, degree: int) -> np.ndarray:
    """Block-diagonal matrix M [(d+1)^2, (d+1)^2] with sh_new = M @ sh for a rotation [3, 3].

    Each band is fitted exactly by least squares on sample directions: the rotated
    function f(R^T d) is again a polynomial of the same band, so the fit is exact.
    """
    k = (degree + 1) ** 2
    # Fixed, well-spread directions (a Fibonacci sphere): no randomness in exports.
    m = 64
    i = np.arange(m) + 0.5
    polar = np.arccos(1 - 2 * i / m)
    azim = np.pi * (1 + 5 ** 0.5) * i
    dirs = np.stack([np.cos(azim) * np.sin(polar), np.sin(azim) * np.sin(polar), np.cos(polar)], 1)
    before = sh_basis(dirs, degree)
    after = sh_basis(dirs @ rotation, degree)  # rows are R^T d
    out = np.zeros((k, k))
    for band in range(degree + 1):
        s = slice(band * band, (band + 1) ** 2)
        out[s, s] = np.linalg.lstsq(before[:, s], after[:, s], rcond=None)[0]
    return out


def to_up_axis(means: np.ndarray, quats: np.ndarray, sh: np.ndarray, up_axis: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotate means [N,3], wxyz quats [N,4] and SH [N,K,3] from FLAME's y-up to `up_axis` ('y' is a no-op)."""
    if up_axis == "y":
        return means, quats, sh
    if up_axis != "z":
        raise ValueError(f"up_axis must be one of {UP_AXES}, got {up_axis!r}")
    means = means @ Z_UP_ROTATION.T.astype(means.dtype)
    quats = quat_multiply(Z_UP_QUAT.astype(quats.dtype), quats)
    if sh.shape[1] > 1:
        degree = int(round(sh.shape[1] ** 0.5)) - 1
        rot = sh_rotation(Z_UP_ROTATION, degree).astype(sh.dtype)
        sh = np.matmul(rot, sh)  # [K,K] @ [N,K,3]
    return means, quats, sh


def from_up_axis(means: np.ndarray, quats: np.ndarray, sh: np.ndarray, up_axis: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The inverse of `to_up_axis`: back to FLAME's y-up."""
    if up_axis == "y":
        return means, quats, sh
    if up_axis != "z":
        raise ValueError(f"up_axis must be one of {UP_AXES}, got {up_axis!r}")
    inverse_quat = Z_UP_QUAT * np.array([1.0, -1.0, -1.0, -1.0])
    means = means @ Z_UP_ROTATION.astype(means.dtype)
    quats = quat_multiply(inverse_quat.astype(quats.dtype), quats)
    if sh.shape[1] > 1:
        degree = int(round(sh.shape[1] ** 0.5)) - 1
        rot = sh_rotation(Z_UP_ROTATION.T, degree).astype(sh.dtype)
        sh = np.matmul(rot, sh)  # [K,K] @ [N,K,3]
    return means, quats, sh
