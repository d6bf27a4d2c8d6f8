"""Compiled (numba) tile rasteriser: binning, front-to-back blending and its backward pass.

Gaussians are binned into 16x16 tiles; each tile's list is depth-sorted (a stable
counting sort by tile of the Gaussians taken in depth order). Tiles run in parallel.
The backward pass walks each pixel's list back to front, recovering transmittance by
division as gsplat does, so nothing per pair is stored by the forward pass. Its
per-pair gradients go to one row per (tile, Gaussian) intersection, which one
thread owns, and are summed per Gaussian afterwards: no atomics, and the result
does not depend on the thread count.

Features are 4 channels: rgb and camera z (for the expected depth).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .common import ALPHA_MAX, ALPHA_MIN, T_MIN, TILE_SIZE

JIT = dict(cache=True, nogil=True)
NF = 4   # feature channels: r, g, b, z

F_ALPHA_MIN = np.float32(ALPHA_MIN)
F_ALPHA_MAX = np.float32(ALPHA_MAX)
F_T_MIN = np.float32(T_MIN)
F_HALF = np.float32(0.5)
F_ONE = np.float32(1.0)
F_ZERO = np.float32(0.0)


@njit(**JIT)
def _tile_box(u, v, radius, tiles_x, tiles_y):
    """Tiles [x0, x1) x [y0, y1) met by the radius box around pixel centre (u, v)."""
    r = radius / TILE_SIZE
    tu, tv = u / TILE_SIZE, v / TILE_SIZE
    x0 = min(max(0, int(math.floor(tu - r))), tiles_x)
    x1 = min(max(0, int(math.ceil(tu + r))), tiles_x)
    y0 = min(max(0, int(math.floor(tv - r))), tiles_y)
    y1 = min(max(0, int(math.ceil(tv + r))), tiles_y)
    return x0, x1, y0, y1


@njit(**JIT)
def _min_sigma_on_box(a, b, c, dx0, dx1, dy0, dy1):
    """Lower bound of 0.5*(a dx^2 + c dy^2) + b dx dy over the box [dx0,dx1] x [dy0,dy1]
    (the conic is positive definite, so the minimum is 0 inside, else on an edge)."""
    if dx0 <= 0.0 <= dx1 and dy0 <= 0.0 <= dy1:
        return 0.0
    best = 1e30
    for k in range(2):
        dy = dy0 if k == 0 else dy1
        dx = min(max(-b * dy / a, dx0), dx1)     # minimiser along this horizontal edge
        best = min(best, 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy)
        dx = dx0 if k == 0 else dx1
        dy = min(max(-b * dx / c, dy0), dy1)     # and along this vertical edge
        best = min(best, 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy)
    return best


@njit(**JIT)
def _tile_reached(u, v, a, b, c, sigma_max, tx, ty, width, height):
    """Whether any pixel centre of tile (tx, ty) can get alpha >= ALPHA_MIN: exact pruning of
    the radius box's corners, with a margin so float rounding never drops a live pair."""
    px0 = tx * TILE_SIZE + 0.5
    py0 = ty * TILE_SIZE + 0.5
    px1 = min(tx * TILE_SIZE + TILE_SIZE, width) - 0.5
    py1 = min(ty * TILE_SIZE + TILE_SIZE, height) - 0.5
    s = _min_sigma_on_box(a, b, c, u - px1, u - px0, v - py1, v - py0)
    return s <= sigma_max * 1.0001 + 1e-3


@njit(parallel=True, **JIT)
def count_tiles(means2d, conics, opacities, radii, width, height, tiles_x, tiles_y, counts):
    """Tiles each Gaussian reaches. means2d [G,2], conics [G,3], opacities [G], radii [G]
    (G = C*N flattened) -> counts [G]."""
    for g in prange(radii.shape[0]):
        counts[g] = 0
        o = float(opacities[g])
        if radii[g] <= 0 or o < ALPHA_MIN * 0.999:
            continue        # alpha = o * exp(-sigma) <= o never reaches ALPHA_MIN
        sigma_max = math.log(o / ALPHA_MIN)
        u, v = float(means2d[g, 0]), float(means2d[g, 1])
        a, b, c = float(conics[g, 0]), float(conics[g, 1]), float(conics[g, 2])
        x0, x1, y0, y1 = _tile_box(u, v, float(radii[g]), tiles_x, tiles_y)
        n = 0
        for ty in range(y0, y1):
            for tx in range(x0, x1):
                if _tile_reached(u, v, a, b, c, sigma_max, tx, ty, width, height):
                    n += 1
        counts[g] = n


@njit(parallel=True, **JIT)
def list_tiles(means2d, conics, opacities, radii, width, height, tiles_x, tiles_y, n_per_cam, offsets,
               isect_tile):
    """Write, for each Gaussian, the global tile ids (camera * tiles + tile) it reaches into
    isect_tile[offsets[g]:offsets[g+1]] (same order and test as count_tiles)."""
    n_tiles = tiles_x * tiles_y
    for g in prange(radii.shape[0]):
        if offsets[g + 1] == offsets[g]:
            continue
        sigma_max = math.log(float(opacities[g]) / ALPHA_MIN)
        u, v = float(means2d[g, 0]), float(means2d[g, 1])
        a, b, c = float(conics[g, 0]), float(conics[g, 1]), float(conics[g, 2])
        x0, x1, y0, y1 = _tile_box(u, v, float(radii[g]), tiles_x, tiles_y)
        base = (g // n_per_cam) * n_tiles
        k = offsets[g]
        for ty in range(y0, y1):
            for tx in range(x0, x1):
                if _tile_reached(u, v, a, b, c, sigma_max, tx, ty, width, height):
                    isect_tile[k] = base + ty * tiles_x + tx
                    k += 1


@njit(**JIT)
def sort_by_tile(order, offsets, isect_tile, n_tiles_total, tile_start, isect_gauss):
    """Stable counting sort of intersections by tile, taking Gaussians in `order` (depth order,
    flattened indices). Fills tile_start [T+1] and isect_gauss [M] (Gaussian of each slot)."""
    tile_start[:] = 0
    for k in range(isect_tile.shape[0]):
        tile_start[isect_tile[k] + 1] += 1
    for t in range(n_tiles_total):
        tile_start[t + 1] += tile_start[t]
    cursor = tile_start[:-1].copy()
    for i in range(order.shape[0]):
        g = order[i]
        for k in range(offsets[g], offsets[g + 1]):
            t = isect_tile[k]
            isect_gauss[cursor[t]] = g
            cursor[t] += 1


@njit(parallel=True, **JIT)
def raster_fwd(tile_start, isect_gauss, means2d, conics, opacities, feats, width, height, tiles_x, tiles_y,
               out_feat, out_trans, out_count):
    """Blend each tile's sorted list front to back.

    means2d [G,2], conics [G,3], opacities [G], feats [G,4] (G = C*N) -> out_feat [C,H,W,4]
    (alpha-weighted features), out_trans [C,H,W] final transmittance, out_count [C,H,W] (list entries walked,
    i.e. 1 + the index of the last contributing entry; 0 if none).
    """
    n_tiles = tiles_x * tiles_y
    for t in prange(tile_start.shape[0] - 1):
        cam, tt = t // n_tiles, t % n_tiles
        ty, tx = tt // tiles_x, tt % tiles_x
        s0, s1 = tile_start[t], tile_start[t + 1]
        n = s1 - s0
        # gather the tile's Gaussians contiguously (structure of arrays)
        gu = np.empty(n, np.float32)
        gv = np.empty(n, np.float32)
        ga = np.empty(n, np.float32)
        gb = np.empty(n, np.float32)
        gc = np.empty(n, np.float32)
        go = np.empty(n, np.float32)
        gf = np.empty((n, NF), np.float32)
        for k in range(n):
            g = isect_gauss[s0 + k]
            gu[k] = means2d[g, 0]
            gv[k] = means2d[g, 1]
            ga[k] = conics[g, 0]
            gb[k] = conics[g, 1]
            gc[k] = conics[g, 2]
            go[k] = opacities[g]
            for ch in range(NF):
                gf[k, ch] = feats[g, ch]
        for py in range(ty * TILE_SIZE, min(ty * TILE_SIZE + TILE_SIZE, height)):
            for px in range(tx * TILE_SIZE, min(tx * TILE_SIZE + TILE_SIZE, width)):
                fx = np.float32(px) + F_HALF
                fy = np.float32(py) + F_HALF
                trans = F_ONE
                a0 = F_ZERO
                a1 = F_ZERO
                a2 = F_ZERO
                a3 = F_ZERO
                count = 0
                for k in range(n):
                    dx = gu[k] - fx
                    dy = gv[k] - fy
                    sigma = F_HALF * (ga[k] * dx * dx + gc[k] * dy * dy) + gb[k] * dx * dy
                    if sigma < F_ZERO:
                        continue
                    alpha = min(F_ALPHA_MAX, go[k] * np.exp(-sigma))
                    if alpha < F_ALPHA_MIN:
                        continue
                    next_t = trans * (F_ONE - alpha)
                    if next_t <= F_T_MIN:
                        break
                    wgt = alpha * trans
                    a0 += wgt * gf[k, 0]
                    a1 += wgt * gf[k, 1]
                    a2 += wgt * gf[k, 2]
                    a3 += wgt * gf[k, 3]
                    trans = next_t
                    count = k + 1
                out_feat[cam, py, px, 0] = a0
                out_feat[cam, py, px, 1] = a1
                out_feat[cam, py, px, 2] = a2
                out_feat[cam, py, px, 3] = a3
                out_trans[cam, py, px] = trans
                out_count[cam, py, px] = count


@njit(parallel=True, **JIT)
def raster_bwd(tile_start, isect_gauss, means2d, conics, opacities, feats, width, height, tiles_x, tiles_y,
               out_trans, out_count, v_feat, v_alpha, isect_grad):
    """Backward of raster_fwd. v_feat [C,H,W,4], v_alpha [C,H,W] -> isect_grad [M,10] per
    intersection: d means2d (2), d conics (3), d opacity (1), d feats (4)."""
    n_tiles = tiles_x * tiles_y
    for t in prange(tile_start.shape[0] - 1):
        cam, tt = t // n_tiles, t % n_tiles
        ty, tx = tt // tiles_x, tt % tiles_x
        s0, s1 = tile_start[t], tile_start[t + 1]
        n = s1 - s0
        gu = np.empty(n, np.float32)
        gv = np.empty(n, np.float32)
        ga = np.empty(n, np.float32)
        gb = np.empty(n, np.float32)
        gc = np.empty(n, np.float32)
        go = np.empty(n, np.float32)
        gf = np.empty((n, NF), np.float32)
        for k in range(n):
            g = isect_gauss[s0 + k]
            gu[k] = means2d[g, 0]
            gv[k] = means2d[g, 1]
            ga[k] = conics[g, 0]
            gb[k] = conics[g, 1]
            gc[k] = conics[g, 2]
            go[k] = opacities[g]
            for ch in range(NF):
                gf[k, ch] = feats[g, ch]
        grad = isect_grad[s0:s1]
        grad[:] = 0.0
        for py in range(ty * TILE_SIZE, min(ty * TILE_SIZE + TILE_SIZE, height)):
            for px in range(tx * TILE_SIZE, min(tx * TILE_SIZE + TILE_SIZE, width)):
                count = out_count[cam, py, px]
                if count == 0:
                    continue
                fx = np.float32(px) + F_HALF
                fy = np.float32(py) + F_HALF
                t_final = out_trans[cam, py, px]
                trans = t_final
                vf0 = v_feat[cam, py, px, 0]
                vf1 = v_feat[cam, py, px, 1]
                vf2 = v_feat[cam, py, px, 2]
                vf3 = v_feat[cam, py, px, 3]
                va = v_alpha[cam, py, px]
                # features blended behind the current entry
                b0 = F_ZERO
                b1 = F_ZERO
                b2 = F_ZERO
                b3 = F_ZERO
                for k in range(count - 1, -1, -1):
                    dx = gu[k] - fx
                    dy = gv[k] - fy
                    sigma = F_HALF * (ga[k] * dx * dx + gc[k] * dy * dy) + gb[k] * dx * dy
                    if sigma < F_ZERO:
                        continue
                    vis = np.exp(-sigma)
                    raw = go[k] * vis
                    alpha = min(F_ALPHA_MAX, raw)
                    if alpha < F_ALPHA_MIN:
                        continue
                    ra = F_ONE / (F_ONE - alpha)
                    trans = trans * ra                   # transmittance in front of entry k
                    wgt = alpha * trans
                    grad[k, 6] += wgt * vf0
                    grad[k, 7] += wgt * vf1
                    grad[k, 8] += wgt * vf2
                    grad[k, 9] += wgt * vf3
                    v_al = (trans * (gf[k, 0] * vf0 + gf[k, 1] * vf1 + gf[k, 2] * vf2 + gf[k, 3] * vf3)
                            - ra * (b0 * vf0 + b1 * vf1 + b2 * vf2 + b3 * vf3) + va * t_final * ra)
                    b0 += wgt * gf[k, 0]
                    b1 += wgt * gf[k, 1]
                    b2 += wgt * gf[k, 2]
                    b3 += wgt * gf[k, 3]
                    if raw > F_ALPHA_MAX:
                        continue                         # capped: no gradient to opacity or shape
                    v_sigma = -alpha * v_al
                    grad[k, 0] += v_sigma * (ga[k] * dx + gb[k] * dy)
                    grad[k, 1] += v_sigma * (gc[k] * dy + gb[k] * dx)
                    grad[k, 2] += F_HALF * v_sigma * dx * dx
                    grad[k, 3] += v_sigma * dx * dy
                    grad[k, 4] += F_HALF * v_sigma * dy * dy
                    grad[k, 5] += vis * v_al


@njit(**JIT)
def gather_grads(isect_gauss, isect_grad, out):
    """Sum per-intersection gradients [M,10] into per-Gaussian rows out [G,10] (zeroed here)."""
    out[:] = 0.0
    for k in range(isect_gauss.shape[0]):
        g = isect_gauss[k]
        for j in range(10):
            out[g, j] += isect_grad[k, j]
