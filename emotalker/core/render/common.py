"""What every renderer backend shares: the output record, the blending constants, input checks.

The constants follow gsplat's tile rasteriser (with the alpha cap of the original
3DGS, 0.99; gsplat itself caps at 0.999).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TILE_SIZE = 16          # pixels a tile side
EPS2D = 0.3             # screen-space dilation added to the 2D covariance (pixels^2)
ALPHA_MIN = 1.0 / 255.0  # a pair with alpha below this is skipped
ALPHA_MAX = 0.99        # alpha is capped here
T_MIN = 1e-4            # a pixel stops once transmittance would fall to this
RADIUS_SIGMAS = 3.0     # the pixel radius covers this many standard deviations
MODES = ("classic", "antialiased")
CAMERA_MODELS = ("pinhole", "ortho")  # gsplat's names; "ortho": u = fx x + cx, v = fy y + cy (no division by z)
BACKENDS = ("auto", "cpu", "gsplat", "reference")


@dataclass
class RenderOutput:
    """rgb [C,H,W,3]; alpha [C,H,W,1]; depth [C,H,W,1] expected camera z (alpha-normalised,
    0 where alpha is 0); means2d [C,N,2] pixel centres (non-leaf: call .retain_grad() before
    backward for the screen-space gradient); radii [C,N] int32 pixel radius, 0 where culled."""

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    means2d: torch.Tensor
    radii: torch.Tensor


def check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, backgrounds, mode,
                 camera_model="pinhole"):
    """Raise ValueError naming the first argument with a wrong shape; returns (C, N)."""
    n = means.shape[0] if means.ndim == 2 else -1
    if means.ndim != 2 or means.shape[1] != 3:
        raise ValueError(f"means must be [N,3], got {list(means.shape)}")
    want = {"quats": (quats, (n, 4)), "scales": (scales, (n, 3)), "opacities": (opacities, (n,))}
    for name, (t, shape) in want.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {list(shape)}, got {list(t.shape)}")
    if viewmats.ndim != 3 or viewmats.shape[1:] != (4, 4):
        raise ValueError(f"viewmats must be [C,4,4], got {list(viewmats.shape)}")
    c = viewmats.shape[0]
    if tuple(Ks.shape) != (c, 3, 3):
        raise ValueError(f"Ks must be [{c},3,3], got {list(Ks.shape)}")
    if sh_degree is None:
        if tuple(colors.shape) != (n, 3):
            raise ValueError(f"colors must be [N,3] when sh_degree is None, got {list(colors.shape)}")
    else:
        if not 0 <= int(sh_degree) <= 3:
            raise ValueError(f"sh_degree must be 0..3, got {sh_degree}")
        k = (int(sh_degree) + 1) ** 2
        if colors.ndim != 3 or colors.shape[0] != n or colors.shape[2] != 3 or colors.shape[1] < k:
            raise ValueError(f"colors must be SH [N,K>={k},3] for sh_degree {sh_degree}, got {list(colors.shape)}")
    if backgrounds is not None and tuple(backgrounds.shape) != (c, 3):
        raise ValueError(f"backgrounds must be [{c},3], got {list(backgrounds.shape)}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if camera_model not in CAMERA_MODELS:
        raise ValueError(f"camera_model must be one of {CAMERA_MODELS}, got {camera_model!r}")
    return c, n


def finish_images(acc: torch.Tensor, alpha: torch.Tensor, backgrounds):
    """Background compositing and depth normalisation shared by the CPU and reference backends.

    acc [C,H,W,4] (alpha-weighted rgb and z), alpha [C,H,W,1] -> (rgb [C,H,W,3], depth [C,H,W,1]).
    """
    rgb = acc[..., :3]
    if backgrounds is not None:
        rgb = rgb + (1.0 - alpha) * backgrounds[:, None, None, :]
    depth = torch.where(alpha > 0, acc[..., 3:4] / alpha.clamp_min(1e-10), torch.zeros_like(alpha))
    return rgb, depth
