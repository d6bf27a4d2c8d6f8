"""EWA projection of 3D Gaussians to the screen, in plain torch (the reference backend's).

Same rules as gsplat's pinhole projection: camera-space depth outside
[near, far] is culled; the Jacobian's x/z and y/z are clamped to 1.3x the field of
view so Gaussians near the image edge do not blow up; EPS2D is added to the 2D
covariance; the radius is RADIUS_SIGMAS standard deviations of the largest
eigenvalue; Gaussians whose radius box misses the image are culled.
The orthographic camera (gsplat's "ortho") maps the camera-space point to
(fx x + cx, fy y + cy): its Jacobian is the constant [[fx, 0, 0], [0, fy, 0]],
nothing is clamped, and depth and culling are as above.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from emotalker.core.base.quaternion import quat_to_matrix
from emotalker.core.render.common import EPS2D, RADIUS_SIGMAS


@dataclass
class Projection:
    """means2d [C,N,2], conics [C,N,3] (upper triangle of the inverse 2D covariance: a, b, c),
    depths [C,N] camera z, compensations [C,N] (antialiasing opacity factor, 1 in classic
    mode), radii [C,N] int32 (0 = culled)."""

    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    compensations: torch.Tensor
    radii: torch.Tensor


def project_torch(means, quats, scales, viewmats, Ks, width, height, near_plane, far_plane,
                  antialiased: bool, camera_model: str = "pinhole") -> Projection:
    """Project means [N,3], quats [N,4], scales [N,3] through viewmats [C,4,4] and Ks [C,3,3]."""
    rot = quat_to_matrix(quats)
    m = rot * scales[:, None, :]
    cov3d = m @ m.transpose(1, 2)                                    # [N,3,3]
    w, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    p = torch.einsum("cij,nj->cni", w, means) + t[:, None, :]         # [C,N,3]
    cov_cam = torch.einsum("cij,njk,clk->cnil", w, cov3d, w)         # [C,N,3,3]
    x, y, z = p.unbind(-1)
    if camera_model == "ortho":
        jac, means2d = _ortho(x, y, Ks)
    else:
        jac, means2d = _pinhole(x, y, z, Ks, width, height)
    cov2d = jac @ cov_cam @ jac.transpose(-1, -2)                   # [C,N,2,2]
    a0, b, c0 = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    a, c = a0 + EPS2D, c0 + EPS2D
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], -1)
    if antialiased:
        comp = torch.sqrt(((a0 * c0 - b * b) / det_safe).clamp_min(0.0))
    else:
        comp = torch.ones_like(det)
    with torch.no_grad():
        half = 0.5 * (a + c)
        lam = half + torch.sqrt((half * half - det).clamp_min(0.01))
        radius = torch.ceil(RADIUS_SIGMAS * torch.sqrt(lam))
        u, v = means2d[..., 0], means2d[..., 1]
        visible = ((z >= near_plane) & (z <= far_plane) & (det > 0) & (radius > 0)
                   & (u + radius > 0) & (u - radius < width) & (v + radius > 0) & (v - radius < height))
        radii = torch.where(visible, radius, torch.zeros_like(radius)).to(torch.int32)
    return Projection(means2d, conics, z, comp, radii)


def _pinhole(x, y, z, Ks, width, height):
    """The perspective Jacobian [C,N,2,3] (x/z and y/z clamped to 1.3x the field of view) and means2d [C,N,2]."""
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    z_safe = torch.where(z.abs() > 1e-12, z, torch.ones_like(z))
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    tx = z_safe * torch.clamp(x / z_safe, min=-(cx / fx + 0.3 * tan_x), max=(width - cx) / fx + 0.3 * tan_x)
    ty = z_safe * torch.clamp(y / z_safe, min=-(cy / fy + 0.3 * tan_y), max=(height - cy) / fy + 0.3 * tan_y)
    zero = torch.zeros_like(z)
    jac = torch.stack([fx / z_safe, zero, -fx * tx / z_safe ** 2,
                       zero, fy / z_safe, -fy * ty / z_safe ** 2], -1).reshape(*z.shape, 2, 3)
    return jac, torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], -1)


def _ortho(x, y, Ks):
    """The orthographic Jacobian [C,N,2,3] (constant per camera) and means2d [C,N,2]."""
    fx, fy = Ks[:, 0, 0, None].expand_as(x), Ks[:, 1, 1, None].expand_as(x)
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    zero = torch.zeros_like(x)
    jac = torch.stack([fx, zero, zero, zero, fy, zero], -1).reshape(*x.shape, 2, 3)
    return jac, torch.stack([fx * x + cx, fy * y + cy], -1)
