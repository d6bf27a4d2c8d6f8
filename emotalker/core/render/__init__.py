"""The Gaussian renderer: one function with gsplat's semantics and three backends.

- `gsplat`: CUDA (the `cuda` extra), picked by `auto` for CUDA tensors;
- `cpu`: compiled numba kernels with a hand-written backward pass (everything else);
- `reference`: plain torch over all pixel-Gaussian pairs, for tests.
"""

from __future__ import annotations

import torch

from emotalker.core.render.common import BACKENDS, RenderOutput, check_inputs

__all__ = ["RenderOutput", "rasterize"]


def rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width, height, *,
              sh_degree=None, backgrounds=None, near_plane=0.01, far_plane=1e10,
              mode="classic", camera_model="pinhole", backend="auto") -> RenderOutput:
    """Render N Gaussians into C cameras (OpenCV axes, world-to-camera viewmats).

    means [N,3]; quats [N,4] wxyz, need not be normalised; scales [N,3] and opacities [N]
    activated; colors [N,3] with sh_degree None, or SH [N,K,3] with sh_degree 0..3 and
    K >= (sh_degree+1)^2 (rgb = max(SH(view dir) + 0.5, 0), view dir from camera centre to
    mean); viewmats [C,4,4]; Ks [C,3,3]; backgrounds [C,3] or None (black). Pixel (i, j)
    has its centre at (j+0.5, i+0.5). Gaussians with camera z outside [near_plane,
    far_plane] are culled. mode "classic" or "antialiased" (opacity scaled by the
    dilation's determinant ratio). camera_model "pinhole" or "ortho" (gsplat's orthographic camera:
    pixel = (fx x + cx, fy y + cy) of the camera-space point, fx and fy in pixels per world unit, so
    the Jacobian is constant; depth, culling, sorting and the SH view direction (from the viewmat's
    camera centre) are as for a pinhole). backend "auto" | "cpu" | "gsplat" | "reference".

    Returns RenderOutput: rgb [C,H,W,3], alpha [C,H,W,1], depth [C,H,W,1], means2d [C,N,2]
    (retain_grad() it for densification), radii [C,N] int32. Differentiable in means,
    quats, scales, opacities, colors and backgrounds.
    """
    check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree,
                 backgrounds, mode, camera_model)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "cpu"
        if means.is_cuda:
            from emotalker.core.render.gsplat_backend import gsplat_available
            backend = "gsplat" if gsplat_available() else "cpu"
    args = (means, quats, scales, opacities, colors, viewmats, Ks, int(width), int(height),
            sh_degree, backgrounds, float(near_plane), float(far_plane), mode, camera_model)
    if backend == "gsplat":
        from emotalker.core.render.gsplat_backend import rasterize_gsplat
        return rasterize_gsplat(*args)
    if backend == "reference":
        from emotalker.core.render.reference import rasterize_reference
        return rasterize_reference(*args)
    from emotalker.core.render.cpu import rasterize_cpu
    device = means.device
    if device.type != "cpu":
        args = tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in args)
    out = rasterize_cpu(*args)
    if device.type != "cpu":
        out = RenderOutput(*(t.to(device) for t in (out.rgb, out.alpha, out.depth, out.means2d, out.radii)))
    return out
