"""gsplat backend (CUDA). gsplat is imported here only, when this backend is used."""

from __future__ import annotations

import torch

from emotalker.core.render.common import RenderOutput


def gsplat_available() -> bool:
    """Whether gsplat can be imported (it is the `cuda` extra)."""
    try:
        import gsplat  # noqa: F401
    except Exception:
        return False
    return True


def rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                     sh_degree, backgrounds, near_plane, far_plane, mode, camera_model) -> RenderOutput:
    """Same arguments and result as `rasterize` (see there), through gsplat.rasterization."""
    from gsplat import rasterization

    renders, alphas, meta = rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, int(width), int(height),
        near_plane=near_plane, far_plane=far_plane, sh_degree=sh_degree, packed=False,
        render_mode="RGB+ED", rasterize_mode=mode, camera_model=camera_model, tile_size=16)
    rgb, depth = renders[..., :3], renders[..., 3:4]
    if backgrounds is not None:
        rgb = rgb + (1.0 - alphas) * backgrounds[:, None, None, :]
    radii = meta["radii"]
    if radii.ndim == 3:          # newer gsplat returns one radius per axis
        radii = radii.max(-1).values
    return RenderOutput(rgb, alphas, depth, meta["means2d"], radii.to(torch.int32))
