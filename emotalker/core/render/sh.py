"""Real spherical harmonics as 3DGS and gsplat evaluate them (degrees 0-3), in torch.

The compiled CPU backend has its own copy of the polynomials (cpu_project.py), with a
hand-written backward; this one is differentiated by autograd and serves the
reference backend.
"""

from __future__ import annotations

import torch

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """Basis values [..., (degree+1)^2] at unit directions dirs [..., 3]."""
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2 * zz - xx - yy),
                SH_C2[3] * x * z, SH_C2[4] * (xx - yy)]
    if degree >= 3:
        out += [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * x * y * z, SH_C3[2] * y * (4 * zz - xx - yy),
                SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy),
                SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3 * yy)]
    return torch.stack(out, -1)


def sh_to_rgb(degree: int, sh: torch.Tensor, means: torch.Tensor, campos: torch.Tensor) -> torch.Tensor:
    """Colours [C,N,3] = clamp(SH(dir) + 0.5, min=0) with dir the unit vector from each
    camera centre campos [C,3] to each mean [N,3]; sh [N,K,3], only the first (degree+1)^2 used."""
    k = (degree + 1) ** 2
    dirs = means[None, :, :] - campos[:, None, :]
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    basis = sh_basis(degree, dirs)                                   # [C,N,k]
    rgb = (basis[..., None] * sh[None, :, :k, :]).sum(-2) + 0.5      # [C,N,3]
    return rgb.clamp_min(0.0)


def camera_centres(viewmats: torch.Tensor) -> torch.Tensor:
    """World-space camera centres [C,3] of world-to-camera viewmats [C,4,4]."""
    rot, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    return -(rot.transpose(1, 2) @ t[..., None])[..., 0]
