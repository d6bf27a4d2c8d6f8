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

UP_AXES = ("y", "z")
Z_UP_ROTATION = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
Z_UP_QUAT = np.array([np.sqrt(0.5), np.sqrt(0.5), 0.0, 0.0])  # wxyz of Z_UP_ROTATION


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of wxyz quaternions a [..., 4] and b [..., 4] -> [..., 4] (rotation a after b)."""
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], -1)


def sh_basis(dirs: np.ndarray, degree: int) -> np.ndarray:
    """The real SH basis of the 3DGS renderers at unit directions dirs [M, 3] -> [M, (degree+1)^2]."""
    x, y, z = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    cols = [np.full_like(x, 0.28209479177387814)]
    if degree >= 1:
        c1 = 0.4886025119029199
        cols += [-c1 * y, c1 * z, -c1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        cols += [1.0925484305920792 * x * y, -1.0925484305920792 * y * z,
                 0.31539156525252005 * (2 * zz - xx - yy), -1.0925484305920792 * x * z,
                 0.5462742152960396 * (xx - yy)]
    if degree >= 3:
        cols += [-0.5900435899266435 * y * (3 * xx - yy), 2.890611442640554 * x * y * z,
                 -0.4570457994644658 * y * (4 * zz - xx - yy), 0.3731763325901154 * z * (2 * zz - 3 * xx - 3 * yy),
                 -0.4570457994644658 * x * (4 * zz - xx - yy), 1.445305721320277 * z * (xx - yy),
                 -0.5900435899266435 * x * (xx - 3 * yy)]
    return np.stack(cols, 1)


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
