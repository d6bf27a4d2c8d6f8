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

from emotalker.core.render.common import ALPHA_MAX, ALPHA_MIN, T_MIN, TILE_SIZE

JIT = dict(cache=True, nogil=True)
NF = 4   # feature channels: r, g, b, z

F_ALPHA_MIN = np.float32(ALPHA_MIN)
F_ALPHA_MAX = np.float32(ALPHA_MAX)
F_T_MIN = np.float32(T_MIN)
F_HALF = np.float32(0.5)
F_ONE = np.float32(1.0)
F_ZERO = np.float32(0.0)
F_TINY = np.float32(1e-10)


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


# exp(-s) for the blending loops: LLVM can vectorise this polynomial (libm's expf it cannot).
# exp(-s) = p(s/16)^16 with p the degree-8 Taylor polynomial of exp(-x) on [0, 0.5]; relative
# error ~1e-7, like expf. s is clamped to [0, EXP_CLAMP]; pairs beyond have alpha < 1/255 anyway
# for opacities up to exp(EXP_CLAMP)/255 ~ 11.
EXP_CLAMP = np.float32(8.0)
_E = tuple(np.float32(1.0 / math.factorial(i)) for i in range(9))
F_SIXTEENTH = np.float32(1.0 / 16.0)


@njit(**JIT)
def exp_neg(s):
    x = min(max(s, F_ZERO), EXP_CLAMP) * F_SIXTEENTH
    p = _E[0] - x * (_E[1] - x * (_E[2] - x * (_E[3] - x * (_E[4] - x * (_E[5] - x * (_E[6] - x * (_E[7] - x * _E[8])))))))
    p = p * p
    p = p * p
    p = p * p
    return p * p


@njit(**JIT)
def _gather_tile(s0, n, ty, height, isect_gauss, means2d, conics, opacities, feats):
    """The tile's Gaussians as contiguous arrays, with the pixel range [p0, p1) of the tile (row-major,
    16 a row) that holds every row the Gaussian's alpha = 1/255 contour can reach."""
    gu = np.empty(n, np.float32)
    gv = np.empty(n, np.float32)
    ga = np.empty(n, np.float32)
    gb = np.empty(n, np.float32)
    gc = np.empty(n, np.float32)
    go = np.empty(n, np.float32)
    gf = np.empty((n, NF), np.float32)
    p0 = np.empty(n, np.int64)
    p1 = np.empty(n, np.int64)
    rows = min(TILE_SIZE, height - ty * TILE_SIZE)
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
        a, b, c, o = float(ga[k]), float(gb[k]), float(gc[k]), float(go[k])
        det = a * c - b * b
        if o < ALPHA_MIN * 0.999 or det <= 0.0:
            p0[k] = 0
            p1[k] = 0
            continue
        # rows where 0.5 d^T Q d <= log(o / ALPHA_MIN) is possible: |dy| <= sqrt(2 smax cov_yy)
        smax = max(math.log(o / ALPHA_MIN), 0.0)
        ey = math.sqrt(2.0 * smax * a / det) * 1.001 + 0.01
        lo = float(gv[k]) - ey - 0.5 - ty * TILE_SIZE     # row r has its centre at r + 0.5
        hi = float(gv[k]) + ey - 0.5 - ty * TILE_SIZE
        r0 = min(max(int(math.ceil(lo)), 0), rows)
        r1 = min(max(int(math.floor(hi)) + 1, r0), rows)
        p0[k] = r0 * TILE_SIZE
        p1[k] = r1 * TILE_SIZE
    return gu, gv, ga, gb, gc, go, gf, p0, p1


@njit(**JIT)
def _tile_pixels(tx, ty, width, height):
    """Pixel centres of the tile [256] and whether each lies inside the image."""
    pxs = np.empty(TILE_SIZE * TILE_SIZE, np.float32)
    pys = np.empty(TILE_SIZE * TILE_SIZE, np.float32)
    inside = np.empty(TILE_SIZE * TILE_SIZE, np.int32)
    for p in range(TILE_SIZE * TILE_SIZE):
        x = tx * TILE_SIZE + p % TILE_SIZE
        y = ty * TILE_SIZE + p // TILE_SIZE
        pxs[p] = np.float32(x) + F_HALF
        pys[p] = np.float32(y) + F_HALF
        inside[p] = 1 if (x < width and y < height) else 0
    return pxs, pys, inside


@njit(parallel=True, fastmath={"contract"}, **JIT)
def raster_fwd(tile_start, isect_gauss, means2d, conics, opacities, feats, backgrounds, width, height, tiles_x,
               tiles_y, out_rgb, out_alpha, out_depth, out_trans, out_count):
    """Blend each tile's sorted list front to back.

    means2d [G,2], conics [G,3], opacities [G], feats [G,4] (G = C*N), backgrounds [C,3] ->
    out_rgb [C,H,W,3] (over the background), out_alpha [C,H,W], out_depth [C,H,W] (alpha-weighted
    z / alpha, 0 where alpha is 0), out_trans [C,H,W] final transmittance, out_count [C,H,W]
    (list entries walked, i.e. 1 + the index of the last contributing entry; 0 if none).
    Gaussian-outer, pixel-inner with selects instead of branches, so the pixel loop vectorises.
    """
    n_tiles = tiles_x * tiles_y
    npix = TILE_SIZE * TILE_SIZE
    for t in prange(tile_start.shape[0] - 1):
        cam, tt = t // n_tiles, t % n_tiles
        ty, tx = tt // tiles_x, tt % tiles_x
        s0, n = tile_start[t], tile_start[t + 1] - tile_start[t]
        gu, gv, ga, gb, gc, go, gf, p0, p1 = _gather_tile(s0, n, ty, height, isect_gauss, means2d, conics,
                                                          opacities, feats)
        pxs, pys, live = _tile_pixels(tx, ty, width, height)
        trans = np.ones(npix, np.float32)
        count = np.zeros(npix, np.int32)
        acc = np.zeros((NF, npix), np.float32)
        n_live = 0
        for p in range(npix):
            n_live += live[p]
        for k in range(n):
            u, v, a, b, c, o = gu[k], gv[k], ga[k], gb[k], gc[k], go[k]
            f0, f1, f2, f3 = gf[k, 0], gf[k, 1], gf[k, 2], gf[k, 3]
            stopped = 0
            for p in range(p0[k], p1[k]):
                dx = u - pxs[p]
                dy = v - pys[p]
                sigma = F_HALF * (a * dx * dx + c * dy * dy) + b * dx * dy
                alpha = min(F_ALPHA_MAX, o * exp_neg(sigma))
                tr = trans[p]
                nt = tr * (F_ONE - alpha)
                ok = (sigma >= F_ZERO) & (alpha >= F_ALPHA_MIN) & (live[p] != 0)
                stop = ok & (nt <= F_T_MIN)
                take = ok & (nt > F_T_MIN)
                w = alpha * tr if take else F_ZERO
                acc[0, p] += w * f0
                acc[1, p] += w * f1
                acc[2, p] += w * f2
                acc[3, p] += w * f3
                trans[p] = nt if take else tr
                count[p] = k + 1 if take else count[p]
                live[p] = 0 if stop else live[p]
                stopped += 1 if stop else 0
            n_live -= stopped
            if n_live == 0:
                break
        for p in range(npix):
            x = tx * TILE_SIZE + p % TILE_SIZE
            y = ty * TILE_SIZE + p // TILE_SIZE
            if x < width and y < height:
                tr = trans[p]
                for ch in range(3):
                    out_rgb[cam, y, x, ch] = acc[ch, p] + tr * backgrounds[cam, ch]
                a = F_ONE - tr
                out_alpha[cam, y, x] = a
                out_depth[cam, y, x] = acc[3, p] / max(a, F_TINY) if a > F_ZERO else F_ZERO
                out_trans[cam, y, x] = tr
                out_count[cam, y, x] = count[p]


@njit(parallel=True, fastmath={"contract", "reassoc", "nsz"}, **JIT)
def raster_bwd(tile_start, isect_gauss, means2d, conics, opacities, feats, backgrounds, width, height, tiles_x,
               tiles_y, out_depth, out_trans, out_count, v_rgb, v_alpha, v_depth, isect_grad):
    """Backward of raster_fwd. v_rgb [C,H,W,3], v_alpha [C,H,W], v_depth [C,H,W] -> isect_grad
    [M,10] per intersection: d means2d (2), d conics (3), d opacity (1), d feats (4).
    (The background's gradient, sum of v_rgb * transmittance, is left to the caller.)

    Walks each tile's list back to front over all its pixels at once; a pixel joins once the
    walk reaches its last contributing entry. Transmittance is recovered by division from the
    final one, and `behind` holds sum_j w_j (f_j . v_f) over the entries behind the current one.
    """
    n_tiles = tiles_x * tiles_y
    npix = TILE_SIZE * TILE_SIZE
    for t in prange(tile_start.shape[0] - 1):
        cam, tt = t // n_tiles, t % n_tiles
        ty, tx = tt // tiles_x, tt % tiles_x
        s0, n = tile_start[t], tile_start[t + 1] - tile_start[t]
        gu, gv, ga, gb, gc, go, gf, p0, p1 = _gather_tile(s0, n, ty, height, isect_gauss, means2d, conics,
                                                          opacities, feats)
        pxs, pys, inside = _tile_pixels(tx, ty, width, height)
        trans = np.zeros(npix, np.float32)
        count = np.zeros(npix, np.int32)
        vf = np.zeros((NF, npix), np.float32)
        va = np.zeros(npix, np.float32)
        behind = np.zeros(npix, np.float32)
        k_max = 0
        for p in range(npix):
            if inside[p] == 0:
                continue
            x = tx * TILE_SIZE + p % TILE_SIZE
            y = ty * TILE_SIZE + p // TILE_SIZE
            count[p] = out_count[cam, y, x]
            tr = out_trans[cam, y, x]
            trans[p] = tr
            # rgb = acc + T bg, alpha = 1 - T, depth = acc_z / alpha: gradients of acc and alpha
            a = F_ONE - tr
            v_a = v_alpha[cam, y, x]
            for ch in range(3):
                vf[ch, p] = v_rgb[cam, y, x, ch]
                v_a -= v_rgb[cam, y, x, ch] * backgrounds[cam, ch]
            if a > F_ZERO:
                vd = v_depth[cam, y, x]
                vf[3, p] = vd / max(a, F_TINY)
                if a >= F_TINY:
                    v_a -= vd * out_depth[cam, y, x] / a
            va[p] = v_a * tr
            k_max = max(k_max, count[p])
        for k in range(k_max - 1, -1, -1):
            u, v, a, b, c, o = gu[k], gv[k], ga[k], gb[k], gc[k], go[k]
            f0, f1, f2, f3 = gf[k, 0], gf[k, 1], gf[k, 2], gf[k, 3]
            g_u = F_ZERO
            g_v = F_ZERO
            g_a = F_ZERO
            g_b = F_ZERO
            g_c = F_ZERO
            g_o = F_ZERO
            g_f0 = F_ZERO
            g_f1 = F_ZERO
            g_f2 = F_ZERO
            g_f3 = F_ZERO
            for p in range(p0[k], p1[k]):
                dx = u - pxs[p]
                dy = v - pys[p]
                sigma = F_HALF * (a * dx * dx + c * dy * dy) + b * dx * dy
                vis = exp_neg(sigma)
                raw = o * vis
                alpha = min(F_ALPHA_MAX, raw)
                ok = (sigma >= F_ZERO) & (alpha >= F_ALPHA_MIN) & (k < count[p])
                ra = F_ONE / (F_ONE - alpha)
                tr = trans[p] * ra if ok else trans[p]       # transmittance in front of entry k
                w = alpha * tr if ok else F_ZERO
                fdot = f0 * vf[0, p] + f1 * vf[1, p] + f2 * vf[2, p] + f3 * vf[3, p]
                v_al = tr * fdot - ra * behind[p] + va[p] * ra
                trans[p] = tr
                behind[p] += w * fdot
                g_f0 += w * vf[0, p]
                g_f1 += w * vf[1, p]
                g_f2 += w * vf[2, p]
                g_f3 += w * vf[3, p]
                # a capped alpha passes no gradient to opacity or shape
                v_sigma = -alpha * v_al if ok & (raw <= F_ALPHA_MAX) else F_ZERO
                g_u += v_sigma * (a * dx + b * dy)
                g_v += v_sigma * (c * dy + b * dx)
                g_a += v_sigma * dx * dx
                g_b += v_sigma * dx * dy
                g_c += v_sigma * dy * dy
                g_o += vis * v_al if ok & (raw <= F_ALPHA_MAX) else F_ZERO
            row = s0 + k
            isect_grad[row, 0] = g_u
            isect_grad[row, 1] = g_v
            isect_grad[row, 2] = F_HALF * g_a
            isect_grad[row, 3] = g_b
            isect_grad[row, 4] = F_HALF * g_c
            isect_grad[row, 5] = g_o
            isect_grad[row, 6] = g_f0
            isect_grad[row, 7] = g_f1
            isect_grad[row, 8] = g_f2
            isect_grad[row, 9] = g_f3
        for k in range(k_max, n):
            for j in range(10):
                isect_grad[s0 + k, j] = F_ZERO


@njit(**JIT)
def gather_grads(isect_gauss, isect_grad, out):
    """Sum per-intersection gradients [M,10] into per-Gaussian rows out [G,10] (zeroed here)."""
    out[:] = 0.0
    for k in range(isect_gauss.shape[0]):
        g = isect_gauss[k]
        for j in range(10):
            out[g, j] += isect_grad[k, j]
