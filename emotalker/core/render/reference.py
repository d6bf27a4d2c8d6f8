"""Reference backend: plain torch over every pixel-Gaussian pair, differentiated by autograd.

For tests only (it is O(pixels x Gaussians) in time and memory). It follows the
tile rasteriser's rules exactly, including the ones that are not pure maths: a
Gaussian reaches a pixel only if the pixel's 16x16 tile meets the Gaussian's radius
box; pairs with alpha < 1/255 are skipped; alpha is capped; a pixel stops at the
first Gaussian that would take its transmittance to T_MIN or below (that Gaussian
is left out). Pixels are processed in chunks under activation checkpointing so
that memory stays bounded.
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from emotalker.core.render.common import ALPHA_MAX, ALPHA_MIN, T_MIN, TILE_SIZE, RenderOutput, finish_images
from emotalker.core.render.projection import project_torch
from emotalker.core.render.sh import camera_centres, sh_to_rgb

PIXEL_CHUNK = 2048


def _blend_pixels(pix, means2d, conics, opac, feats, tile_lo, tile_hi):
    """Composite sorted Gaussians over pixel centres pix [P,2].

    means2d [G,2], conics [G,3], opac [G], feats [G,4] front to back; tile_lo/hi [G,2] the
    tile box (hi exclusive). Returns acc [P,4] and alpha [P,1].
    """
    d = means2d[None, :, :] - pix[:, None, :]                        # [P,G,2]
    dx, dy = d[..., 0], d[..., 1]
    sigma = 0.5 * (conics[:, 0] * dx * dx + conics[:, 2] * dy * dy) + conics[:, 1] * dx * dy
    alpha = torch.clamp(opac * torch.exp(-sigma), max=ALPHA_MAX)
    tile = torch.floor(pix / TILE_SIZE)                              # [P,2]
    in_box = ((tile[:, None, :] >= tile_lo[None]) & (tile[:, None, :] < tile_hi[None])).all(-1)
    valid = in_box & (sigma >= 0) & (alpha >= ALPHA_MIN)
    alpha = torch.where(valid, alpha, torch.zeros_like(alpha))
    trans_after = torch.cumprod(1.0 - alpha, dim=1)
    trans_before = torch.cat([torch.ones_like(trans_after[:, :1]), trans_after[:, :-1]], 1)
    weights = alpha * trans_before * (trans_after > T_MIN)
    return weights @ feats, weights.sum(1, keepdim=True)


def rasterize_reference(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                        sh_degree, backgrounds, near_plane, far_plane, mode, camera_model) -> RenderOutput:
    """Same arguments and result as `rasterize` (see there)."""
    proj = project_torch(means, quats, scales, viewmats, Ks, width, height, near_plane, far_plane,
                         antialiased=(mode == "antialiased"), camera_model=camera_model)
    if sh_degree is None:
        rgb_g = colors[None].expand(viewmats.shape[0], -1, -1)
    else:
        rgb_g = sh_to_rgb(sh_degree, colors, means, camera_centres(viewmats))
    opac = opacities[None] * proj.compensations
    feats = torch.cat([rgb_g, proj.depths[..., None]], -1)           # [C,N,4]
    # culled Gaussians report (0, 0), as the CPU backend does; this is the tensor blended below
    means2d = torch.where(proj.radii[..., None] > 0, proj.means2d, torch.zeros_like(proj.means2d))

    ys, xs = torch.meshgrid(torch.arange(height, dtype=means.dtype, device=means.device),
                            torch.arange(width, dtype=means.dtype, device=means.device), indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(-1, 2) + 0.5
    tiles_x, tiles_y = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    accs, alphas = [], []
    for c in range(viewmats.shape[0]):
        keep = torch.nonzero(proj.radii[c] > 0)[:, 0]
        order = keep[torch.argsort(proj.depths[c, keep].detach(), stable=True)]
        m2d = means2d[c, order]
        r = proj.radii[c, order].to(means.dtype)[:, None]
        limits = torch.tensor([tiles_x, tiles_y], dtype=means.dtype, device=means.device)
        lo = torch.minimum(torch.floor(m2d.detach() / TILE_SIZE - r / TILE_SIZE).clamp_min(0), limits)
        hi = torch.minimum(torch.ceil(m2d.detach() / TILE_SIZE + r / TILE_SIZE).clamp_min(0), limits)
        args = (m2d, proj.conics[c, order], opac[c, order], feats[c, order], lo, hi)
        acc_parts, alpha_parts = [], []
        for start in range(0, pix.shape[0], PIXEL_CHUNK):
            chunk = pix[start:start + PIXEL_CHUNK]
            a, al = checkpoint(_blend_pixels, chunk, *args, use_reentrant=False)
            acc_parts.append(a)
            alpha_parts.append(al)
        accs.append(torch.cat(acc_parts).reshape(height, width, 4))
        alphas.append(torch.cat(alpha_parts).reshape(height, width, 1))
    acc, alpha = torch.stack(accs), torch.stack(alphas)
    rgb, depth = finish_images(acc, alpha, backgrounds)
    return RenderOutput(rgb, alpha, depth, means2d, proj.radii)
