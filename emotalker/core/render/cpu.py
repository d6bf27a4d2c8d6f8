"""CPU backend: autograd functions around the numba kernels (cpu_project.py, cpu_raster.py).

Three differentiable steps, as in gsplat, so that the projected 2D means are a
tensor of the graph that callers can `.retain_grad()` on:
project (means, quats, scales -> means2d, conics, depths, compensations, radii),
SH colours (sh, means -> rgb per camera), and rasterise (-> alpha-weighted
rgb+z and alpha). Everything runs in float32; inputs of another dtype are cast.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from emotalker.core.render import cpu_project as kp
from emotalker.core.render import cpu_raster as kr
from emotalker.core.render.common import TILE_SIZE, RenderOutput
from emotalker.core.render.sh import camera_centres


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, viewmats, ks, width, height, near, far, antialiased, ortho):
        c, n = viewmats.shape[0], means.shape[0]
        means2d = torch.empty(c, n, 2)
        conics = torch.empty(c, n, 3)
        depths = torch.empty(c, n)
        comps = torch.empty(c, n)
        radii = torch.empty(c, n, dtype=torch.int32)
        kp.project_fwd(_np(means), _np(quats), _np(scales), _np(viewmats), _np(ks), float(width), float(height),
                       float(near), float(far), bool(antialiased), bool(ortho),
                       means2d.numpy(), conics.numpy(), depths.numpy(), comps.numpy(), radii.numpy())
        ctx.save_for_backward(means, quats, scales, viewmats, ks, radii)
        ctx.args = (float(width), float(height), bool(antialiased), bool(ortho))
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, comps, radii

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_depths, v_comps, _v_radii):
        means, quats, scales, viewmats, ks, radii = ctx.saved_tensors
        width, height, antialiased, ortho = ctx.args
        v_means = torch.empty_like(means)
        v_quats = torch.empty_like(quats)
        v_scales = torch.empty_like(scales)
        kp.project_bwd(_np(means), _np(quats), _np(scales), _np(viewmats), _np(ks), width, height, antialiased, ortho,
                       _np(radii), _np(v_means2d), _np(v_conics), _np(v_depths), _np(v_comps),
                       v_means.numpy(), v_quats.numpy(), v_scales.numpy())
        return v_means, v_quats, v_scales, None, None, None, None, None, None, None, None


class _SHColors(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sh, means, campos, degree):
        colors = torch.empty(campos.shape[0], means.shape[0], 3)
        kp.sh_fwd(int(degree), _np(sh), _np(means), _np(campos), colors.numpy())
        ctx.save_for_backward(sh, means, campos)
        ctx.degree = int(degree)
        return colors

    @staticmethod
    def backward(ctx, v_colors):
        sh, means, campos = ctx.saved_tensors
        v_sh = torch.empty_like(sh)
        v_means = torch.empty_like(means)
        kp.sh_bwd(ctx.degree, _np(sh), _np(means), _np(campos), _np(v_colors), v_sh.numpy(), v_means.numpy())
        return v_sh, v_means, None, None


def bin_gaussians(means2d, conics, opacities, feats, depths, radii, width, height):
    """Tile lists. means2d [C,N,2], conics [C,N,3], opacities [C,N], feats [C,N,4], depths [C,N],
    radii [C,N] -> (tile_start [C*T+1] int64, isect_gauss [M] int64 flat C*N indices, depth-sorted
    within each tile, and per flat Gaussian pack [C*N, GP_COLS] and reach [C*N, 5]: see
    cpu_raster.list_tiles)."""
    c, n = radii.shape
    tiles_x, tiles_y = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    flat = lambda t, k: _np(t).reshape(c * n, k) if k else _np(t).reshape(c * n)  # noqa: E731
    m2d, con, opa, rad = flat(means2d, 2), flat(conics, 3), flat(opacities, 0), flat(radii, 0)
    room = np.empty(c * n, np.int64)
    kr.count_tiles(m2d, con, opa, rad, float(width), float(height), tiles_x, tiles_y, room)
    offsets = np.zeros(c * n + 1, np.int64)
    np.cumsum(room, out=offsets[1:])
    isect_tile = np.empty(int(offsets[-1]), np.int64)
    hits = np.empty(c * n, np.int64)
    pack = np.empty((c * n, kr.GP_COLS), np.float32)
    reach = np.empty((c * n, 5), np.float64)
    kr.list_tiles(m2d, con, opa, flat(feats, 4), rad, float(width), float(height), tiles_x, tiles_y, n, offsets,
                  isect_tile, hits, pack, reach)
    order = kr.depth_order(flat(depths, 0), hits)
    tile_start = np.empty(c * tiles_x * tiles_y + 1, np.int64)
    isect_gauss = np.empty(int(hits.sum()), np.int64)
    kr.sort_by_tile(order, offsets, hits, isect_tile, c * tiles_x * tiles_y, tile_start, isect_gauss)
    return tile_start, isect_gauss, pack, reach


def _tile_lists(means2d, conics, opacities, feats, depths, radii, width, height):
    """bin_gaussians, then each intersection's parameters in tile order (gp, see cpu_raster.GU..R1)
    and the order the kernel threads take the tiles in."""
    tiles_x, tiles_y = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    tile_start, isect_gauss, pack, reach = bin_gaussians(means2d, conics, opacities, feats, depths, radii, width,
                                                         height)
    gp = np.empty((isect_gauss.shape[0], kr.GP_COLS), np.float32)
    kr.gather_isects(tile_start, isect_gauss, tiles_x, tiles_y, height, pack, reach, gp)
    return tile_start, isect_gauss, gp, kr.tile_order(tile_start)


class _Rasterize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, feats, backgrounds, depths, radii, width, height):
        c = radii.shape[0]
        tiles_x, tiles_y = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
        tile_start, isect_gauss, gp, order = _tile_lists(means2d, conics, opacities, feats, depths, radii,
                                                            width, height)
        rgb = torch.empty(c, height, width, 3)
        alpha = torch.empty(c, height, width, 1)
        depth = torch.empty(c, height, width, 1)
        trans = torch.empty(c, height, width)
        count = torch.empty(c, height, width, dtype=torch.int32)
        kr.raster_fwd(tile_start, order, numba.get_num_threads(), np.zeros(1, np.int64), gp, _np(backgrounds), width,
                      height, tiles_x, tiles_y, rgb.numpy(), alpha.numpy()[..., 0], depth.numpy()[..., 0],
                      trans.numpy(), count.numpy())
        ctx.save_for_backward(opacities, backgrounds, depth, trans, count)
        ctx.bins = (tile_start, isect_gauss, gp, order)
        ctx.size = (width, height)
        return rgb, alpha, depth

    @staticmethod
    def backward(ctx, v_rgb, v_alpha, v_depth):
        opacities, backgrounds, depth, trans, count = ctx.saved_tensors
        tile_start, isect_gauss, gp, order = ctx.bins
        width, height = ctx.size
        c, n = opacities.shape
        tiles_x, tiles_y = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
        isect_grad = np.empty((isect_gauss.shape[0], kr.NG), np.float32)
        kr.raster_bwd(tile_start, order, numba.get_num_threads(), np.zeros(1, np.int64), gp, _np(backgrounds), width,
                      height, tiles_x, tiles_y, _np(depth)[..., 0], _np(trans), _np(count), _np(v_rgb),
                      _np(v_alpha)[..., 0], _np(v_depth)[..., 0], isect_grad)
        per_gauss = torch.empty(c * n, kr.NG)
        kr.gather_grads(isect_gauss, isect_grad, per_gauss.numpy())
        per_gauss = per_gauss.reshape(c, n, kr.NG)
        v_bg = None
        if ctx.needs_input_grad[4]:
            v_bg = torch.einsum("chwk,chw->ck", v_rgb, trans)
        return (per_gauss[..., 0:2], per_gauss[..., 2:5], per_gauss[..., 5], per_gauss[..., 6:10], v_bg,
                None, None, None, None)


def rasterize_cpu(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                  sh_degree, backgrounds, near_plane, far_plane, mode, camera_model) -> RenderOutput:
    """Same arguments and result as `rasterize` (see there); float32 throughout."""
    f32 = lambda t: t if t is None else t.float()  # noqa: E731
    means, quats, scales, opacities, colors = map(f32, (means, quats, scales, opacities, colors))
    viewmats, Ks, backgrounds = f32(viewmats).detach(), f32(Ks).detach(), f32(backgrounds)
    width, height = int(width), int(height)
    means2d, conics, depths, comps, radii = _Project.apply(
        means, quats, scales, viewmats, Ks, width, height, near_plane, far_plane, mode == "antialiased",
        camera_model == "ortho")
    c = viewmats.shape[0]
    if sh_degree is None:
        rgb_g = colors[None].expand(c, -1, -1)
    else:
        rgb_g = _SHColors.apply(colors, means, camera_centres(viewmats), sh_degree)
    opac = opacities[None] * comps
    feats = torch.cat([rgb_g, depths[..., None]], -1)
    if backgrounds is None:
        backgrounds = torch.zeros(c, 3)
    rgb, alpha, depth = _Rasterize.apply(means2d, conics, opac, feats, backgrounds, depths, radii, width, height)
    return RenderOutput(rgb, alpha, depth, means2d, radii)
