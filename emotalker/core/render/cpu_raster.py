"""Compiled (numba) tile rasteriser: binning, front-to-back blending and its backward pass.

Gaussians are binned into 16x16 tiles; each tile's list is depth-sorted (a stable
counting sort by tile of the Gaussians taken in depth order, from a radix sort of the
depths), and each intersection's parameters are gathered into one row of `gp`.
Threads take the tiles longest first, each the next one when it is done (next_tile). The blending loops take
a Gaussian at a time over the pixels of the tile rows it reaches, as one vectorised
run (see docs/renderer.md for what keeps them vectorised: no branches, no masked
stores, unsigned indices). The backward pass walks each pixel's list back to front,
recovering transmittance by division as gsplat does, so nothing per pair is stored by
the forward pass. Its per-pair gradients go to one row per (tile, Gaussian)
intersection, which one thread owns, and are summed per Gaussian afterwards: no
atomics, and the result does not depend on the thread count.

Features are 4 channels: rgb and camera z (for the expected depth).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

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
    """Room for each Gaussian's tiles: the tiles of its radius box (list_tiles keeps those its
    contour reaches). means2d [G,2], conics [G,3], opacities [G], radii [G] (G = C*N flattened)
    -> counts [G]."""
    for g in prange(radii.shape[0]):
        counts[g] = 0
        if radii[g] <= 0 or float(opacities[g]) < ALPHA_MIN * 0.999:
            continue        # alpha = o * exp(-sigma) <= o never reaches ALPHA_MIN
        x0, x1, y0, y1 = _tile_box(float(means2d[g, 0]), float(means2d[g, 1]), float(radii[g]), tiles_x, tiles_y)
        counts[g] = (x1 - x0) * (y1 - y0)


@njit(parallel=True, **JIT)
def list_tiles(means2d, conics, opacities, feats, radii, width, height, tiles_x, tiles_y, n_per_cam, offsets,
               isect_tile, hits, pack, reach):
    """Write, for each Gaussian, the global tile ids (camera * tiles + tile) of the radius box's tiles
    that its alpha = 1/255 contour can reach into isect_tile[offsets[g]:offsets[g] + hits[g]] (row
    by row); its parameters (GU..GF+3) into pack [G, GP_COLS], one cache line for gather_isects;
    and into reach [G, 5] the contour's extent: the lowest and highest pixel-centre offsets
    v - ey - 0.5, v + ey - 0.5, ey (the half-height; -1: no pixel), u - ex - 0.5, u + ex - 0.5."""
    n_tiles = tiles_x * tiles_y
    for g in prange(radii.shape[0]):
        reach[g, 2] = -1.0
        hits[g] = 0
        if offsets[g + 1] == offsets[g]:
            continue
        sigma_max = math.log(float(opacities[g]) / ALPHA_MIN)
        u, v = float(means2d[g, 0]), float(means2d[g, 1])
        a, b, c = float(conics[g, 0]), float(conics[g, 1]), float(conics[g, 2])
        pack[g, GU], pack[g, GV], pack[g, GO] = means2d[g, 0], means2d[g, 1], opacities[g]
        pack[g, GA], pack[g, GB], pack[g, GC] = conics[g, 0], conics[g, 1], conics[g, 2]
        for ch in range(NF):
            pack[g, GF + ch] = feats[g, ch]
        det = a * c - b * b
        if det > 0.0:
            # rows where 0.5 d^T Q d <= log(o / ALPHA_MIN) is possible: |dy| <= sqrt(2 smax cov_yy)
            ey = math.sqrt(2.0 * max(sigma_max, 0.0) * a / det) * 1.001 + 0.01
            reach[g, 0] = v - ey - 0.5
            reach[g, 1] = v + ey - 0.5
            reach[g, 2] = ey
            ex = math.sqrt(2.0 * max(sigma_max, 0.0) * c / det) * 1.001 + 0.01    # and |dx|, with cov_xx
            reach[g, 3] = u - ex - 0.5
            reach[g, 4] = u + ex - 0.5
        x0, x1, y0, y1 = _tile_box(u, v, float(radii[g]), tiles_x, tiles_y)
        base = (g // n_per_cam) * n_tiles
        k = offsets[g]
        for ty in range(y0, y1):
            for tx in range(x0, x1):
                if _tile_reached(u, v, a, b, c, sigma_max, tx, ty, width, height):
                    isect_tile[k] = base + ty * tiles_x + tx
                    k += 1
        hits[g] = k - offsets[g]


@njit(**JIT)
def depth_order(depths, counts):
    """Flat indices of the Gaussians with tiles (counts > 0), sorted by depth, ties by index (as a
    stable argsort): an LSD radix sort of the float32 depths' bits made order-preserving."""
    m = 0
    for g in range(counts.shape[0]):
        m += counts[g] > 0
    keys = np.empty(m, np.uint32)
    idx = np.empty(m, np.int64)
    bits = depths.view(np.uint32)
    m = 0
    for g in range(counts.shape[0]):
        if counts[g] > 0:
            b = bits[g]
            keys[m] = ~b if b >> np.uint32(31) else b | np.uint32(0x80000000)
            idx[m] = g
            m += 1
    keys2 = np.empty_like(keys)
    idx2 = np.empty_like(idx)
    hist = np.empty(2048, np.int64)
    for shift in (0, 11, 22):
        hist[:] = 0
        for i in range(m):
            hist[(keys[i] >> np.uint32(shift)) & np.uint32(2047)] += 1
        total = 0
        for d in range(2048):
            h = hist[d]
            hist[d] = total
            total += h
        for i in range(m):
            d = (keys[i] >> np.uint32(shift)) & np.uint32(2047)
            keys2[hist[d]] = keys[i]
            idx2[hist[d]] = idx[i]
            hist[d] += 1
        keys, keys2 = keys2, keys
        idx, idx2 = idx2, idx
    return idx


@njit(**JIT)
def sort_by_tile(order, offsets, hits, isect_tile, n_tiles_total, tile_start, isect_gauss):
    """Stable counting sort of intersections by tile, taking Gaussians in `order` (depth order,
    flattened indices). Fills tile_start [T+1] and isect_gauss [:tile_start[T]] (Gaussian of each
    slot); Gaussian g's tiles are isect_tile[offsets[g]:offsets[g] + hits[g]]."""
    tile_start[:] = 0
    for i in range(order.shape[0]):
        g = order[i]
        for k in range(offsets[g], offsets[g] + hits[g]):
            tile_start[isect_tile[k] + 1] += 1
    for t in range(n_tiles_total):
        tile_start[t + 1] += tile_start[t]
    cursor = tile_start[:-1].copy()
    for i in range(order.shape[0]):
        g = order[i]
        for k in range(offsets[g], offsets[g] + hits[g]):
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


# One row of `gp` per intersection (tile slot), in tile order: the Gaussian's screen-space
# parameters and features, and the tile rows [R0, R1) its alpha = 1/255 contour can reach.
# One cache line a Gaussian: the blending loops read them as scalars, one Gaussian at a time.
GU, GV, GA, GB, GC, GO, GF, R0, R1, C0, C1 = 0, 1, 2, 3, 4, 5, 6, 10, 11, 12, 13
GP_COLS = 14


@njit(parallel=True, **JIT)
def gather_isects(tile_start, isect_gauss, tiles_x, tiles_y, height, pack, reach, gp):
    """Fill gp [M, GP_COLS] float32 from the Gaussians' packed rows (list_tiles); the row range is
    exact pruning: rows whose centres lie beyond the contour's reach are left out."""
    n_tiles = tiles_x * tiles_y
    for t in prange(tile_start.shape[0] - 1):
        ty, tx = (t % n_tiles) // tiles_x, (t % n_tiles) % tiles_x
        rows = min(TILE_SIZE, height - ty * TILE_SIZE)
        for i in range(tile_start[t], tile_start[t + 1]):
            g = isect_gauss[i]
            for col in range(GF + NF):
                gp[i, col] = pack[g, col]
            r0, r1 = 0, 0
            if reach[g, 2] >= 0.0:
                lo = reach[g, 0] - ty * TILE_SIZE     # row r has its centre at r + 0.5
                hi = reach[g, 1] - ty * TILE_SIZE
                r0 = min(max(int(math.ceil(lo)), 0), rows)
                r1 = min(max(int(math.floor(hi)) + 1, r0), rows)
            gp[i, R0] = r0
            gp[i, R1] = r1
            c0, c1 = 0, 0
            if reach[g, 2] >= 0.0:     # the columns likewise (clipped to the tile, not the image)
                c0 = min(max(int(math.ceil(reach[g, 3] - tx * TILE_SIZE)), 0), TILE_SIZE)
                c1 = min(max(int(math.floor(reach[g, 4] - tx * TILE_SIZE)) + 1, c0), TILE_SIZE)
            gp[i, C0] = c0
            gp[i, C1] = c1


@njit(**JIT)
def tile_order(tile_start):
    """Tiles by their list length, longest first (ties by index): the order the threads take them
    in (next_tile), so that the long tiles start early and the short ones fill in at the end."""
    return np.argsort(-(tile_start[1:] - tile_start[:-1]), kind="mergesort")


@intrinsic
def _fetch_add(typingctx, counter, value):
    """counter[0] += value, atomically; returns the old value (counter: an int64 array)."""
    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], ary, [context.get_constant(types.intp, 0)],
                                       wraparound=False)
        return builder.atomic_rmw("add", ptr, args[1], "monotonic")
    return types.int64(counter, types.int64), codegen


@njit(**JIT)
def next_tile(order, counter):
    """The next tile for the calling thread (-1 when none are left): threads take tiles from one
    shared counter as they finish, so a thread that runs slower (a core shared with another
    process) takes fewer. Which thread takes a tile changes only the speed, never a value."""
    q = _fetch_add(counter, np.int64(1))
    return order[q] if q < order.shape[0] else -1


assert TILE_SIZE in (8, 16, 32)
U_COL, U_ROW_SHIFT = np.uint64(TILE_SIZE - 1), np.uint64(TILE_SIZE.bit_length() - 1)   # p = row * TILE_SIZE + column

# per-pixel state of the forward pass: rows of the tile's 256 pixels in one flat array, the pixels
# in 4x4 blocks (16 pixels, one vector), the blocks row-major: a Gaussian walks only the blocks its
# contour's box meets, a third fewer pixels than whole rows of the tile
NPIX_F = TILE_SIZE * TILE_SIZE
U_FT, U_FR, U_FG, U_FB, U_FZ, U_FCNT, U_FLIVE = (np.uint64(ch * NPIX_F) for ch in range(7))
BLK = 4                                      # block side
NBX = TILE_SIZE // BLK                       # blocks a tile side
U2, U3, U4, U15 = np.uint64(2), np.uint64(3), np.uint64(4), np.uint64(15)
U_NBX_MASK, U_NBX_SHIFT = np.uint64(NBX - 1), np.uint64(NBX.bit_length() - 1)


@njit(**JIT)
def _block_xy(p):
    """Column and row in the tile of state pixel p (4x4 blocks, row-major blocks)."""
    blk, lane = p // (BLK * BLK), p % (BLK * BLK)
    return (blk % NBX) * BLK + lane % BLK, (blk // NBX) * BLK + lane // BLK


@njit(fastmath={"contract"}, error_model="numpy", **JIT)
def _blend_gaussian(st, gp, i, kf, fx0, fy0):
    """Blend gp row i (list entry kf - 1) over the blocks of the tile its contour's box meets, a
    run of pixels a row of blocks, with unsigned indices (see _unblend_gaussian). Returns how
    many pixels it stopped."""
    u, v, a, b, c, o = gp[i, GU], gp[i, GV], gp[i, GA], gp[i, GB], gp[i, GC], gp[i, GO]
    f0, f1, f2, f3 = gp[i, GF], gp[i, GF + 1], gp[i, GF + 2], gp[i, GF + 3]
    r0, r1, c0, c1 = int(gp[i, R0]), int(gp[i, R1]), int(gp[i, C0]), int(gp[i, C1])
    stopped = 0
    if r1 <= r0 or c1 <= c0:
        return stopped
    bc0, bc1 = c0 // BLK, (c1 - 1) // BLK + 1
    for by in range(r0 // BLK, (r1 - 1) // BLK + 1):
        lo, hi = (by * NBX + bc0) * BLK * BLK, (by * NBX + bc1) * BLK * BLK
        stopped += _blend_run(st, np.uint64(lo), np.uint64(hi), u, v, a, b, c, o, f0, f1, f2, f3, kf, fx0, fy0)
    return stopped


@njit(fastmath={"contract"}, error_model="numpy", **JIT)
def _blend_run(st, lo, hi, u, v, a, b, c, o, f0, f1, f2, f3, kf, fx0, fy0):
    """_blend_gaussian's pixels lo..hi-1 (unsigned state indices) -> pixels stopped."""
    stopped = 0
    for p in range(lo, hi):
        blk, lane = p >> U4, p & U15
        dx = u - (fx0 + np.float32(((blk & U_NBX_MASK) << U2) | (lane & U3)))    # exact: small integers
        dy = v - (fy0 + np.float32(((blk >> U_NBX_SHIFT) << U2) | (lane >> U2)))   # and halves
        sigma = F_HALF * (a * dx * dx + c * dy * dy) + b * dx * dy
        e = o * exp_neg(sigma)
        alpha = e if e < F_ALPHA_MAX else F_ALPHA_MAX
        tr = st[U_FT + p]
        nt = tr * (F_ONE - alpha)
        ok = (sigma >= F_ZERO) & (alpha >= F_ALPHA_MIN) & (st[U_FLIVE + p] != F_ZERO)
        stop = ok & (nt <= F_T_MIN)
        take = np.float32(ok & (nt > F_T_MIN))
        # selects as exact arithmetic on 0/1 masks: Python's `a if c else b` is a branch, which
        # the vectoriser turns into masked stores, and a masked store stalls the next
        # Gaussian's loads of the same pixels (no store forwarding)
        w = alpha * tr * take
        st[U_FR + p] += w * f0
        st[U_FG + p] += w * f1
        st[U_FB + p] += w * f2
        st[U_FZ + p] += w * f3
        st[U_FT + p] = tr * (F_ONE - alpha * take)
        cnt = st[U_FCNT + p]
        st[U_FCNT + p] = cnt + (kf - cnt) * take
        st[U_FLIVE + p] *= F_ONE - np.float32(stop)
        stopped += stop
    return stopped


@njit(parallel=True, fastmath={"contract"}, **JIT)
def raster_fwd(tile_start, order, n_threads, counter, gp, backgrounds, width, height, tiles_x, tiles_y,
               out_rgb, out_alpha, out_depth, out_trans, out_count):
    """Blend each tile's sorted list front to back, a Gaussian at a time over the rows it reaches.

    gp [M, GP_COLS] (gather_isects), order [T] (tile_order), n_threads (numba's thread count),
    counter [1] int64 (next_tile's; an argument, so that numba cannot give each thread its own),
    backgrounds [C,3] ->
    out_rgb [C,H,W,3] (over the background), out_alpha [C,H,W], out_depth [C,H,W] (alpha-weighted
    z / alpha, 0 where alpha is 0), out_trans [C,H,W] final transmittance, out_count [C,H,W]
    (list entries walked, i.e. 1 + the index of the last contributing entry; 0 if none).
    Each pixel is blended by one thread in list order, whichever thread takes its tile (next_tile).
    """
    n_tiles = tiles_x * tiles_y
    counter[0] = 0
    for _ in prange(n_threads):
        st = np.empty(7 * NPIX_F, np.float32)
        while True:
            t = next_tile(order, counter)
            if t < 0:
                break
            cam, tt = t // n_tiles, t % n_tiles
            ty, tx = tt // tiles_x, tt % tiles_x
            s0, n = tile_start[t], tile_start[t + 1] - tile_start[t]
            cols = min(TILE_SIZE, width - tx * TILE_SIZE)
            rows = min(TILE_SIZE, height - ty * TILE_SIZE)
            st[:] = F_ZERO
            n_live = 0
            for p in range(NPIX_F):
                st[p] = F_ONE
                x, y = _block_xy(p)
                if x < cols and y < rows:
                    st[6 * NPIX_F + p] = F_ONE
                    n_live += 1
            fx0 = np.float32(tx * TILE_SIZE) + F_HALF
            fy0 = np.float32(ty * TILE_SIZE) + F_HALF
            for k in range(n):
                n_live -= _blend_gaussian(st, gp, s0 + k, np.float32(k + 1), fx0, fy0)
                if n_live == 0:
                    break
            for p in range(NPIX_F):
                j, r = _block_xy(p)
                if j >= cols or r >= rows:
                    continue
                x, y = tx * TILE_SIZE + j, ty * TILE_SIZE + r
                tr = st[p]
                for ch in range(3):
                    out_rgb[cam, y, x, ch] = st[(1 + ch) * NPIX_F + p] + tr * backgrounds[cam, ch]
                a = F_ONE - tr
                out_alpha[cam, y, x] = a
                out_depth[cam, y, x] = st[4 * NPIX_F + p] / max(a, F_TINY) if a > F_ZERO else F_ZERO
                out_trans[cam, y, x] = tr
                out_count[cam, y, x] = np.int32(st[5 * NPIX_F + p])


# per-pixel state of the backward pass, one flat array of rows of the tile's 256 pixels (flat, so
# that the rows' distances are constants and the pixel loop vectorises without alias checks):
# transmittance, the sum behind, the gradients of the features and of alpha, and the count
NPIX = TILE_SIZE * TILE_SIZE
B_T, B_BEH, B_VF, B_VA, B_CNT = 0, NPIX, 2 * NPIX, 6 * NPIX, 7 * NPIX
NS_BWD = 8
NG = 10   # gradient columns: d means2d (2), d conics (3), d opacity, d feats (4)
U_T, U_BEH, U_VA, U_CNT = np.uint64(B_T), np.uint64(B_BEH), np.uint64(B_VA), np.uint64(B_CNT)
U_VF0, U_VF1, U_VF2, U_VF3 = (np.uint64(B_VF + ch * NPIX) for ch in range(4))


@njit(**JIT)
def _load_bwd_state(st, row_max, cam, tx, ty, width, height, backgrounds, out_depth, out_trans, out_count,
                    v_rgb, v_alpha, v_depth):
    """The tile's pixels' final state and output gradients into st [NS_BWD * NPIX]; row_max [16]
    the largest count of each row. Returns the tile's largest count."""
    st[:] = F_ZERO
    k_max = 0
    for r in range(TILE_SIZE):
        row_max[r] = 0
        for j in range(TILE_SIZE):
            x, y, p = tx * TILE_SIZE + j, ty * TILE_SIZE + r, r * TILE_SIZE + j
            if x >= width or y >= height:
                continue
            cnt = out_count[cam, y, x]
            tr = out_trans[cam, y, x]
            st[B_CNT + p] = np.float32(cnt)
            st[B_T + p] = tr
            # rgb = acc + T bg, alpha = 1 - T, depth = acc_z / alpha: gradients of acc and alpha
            a = F_ONE - tr
            v_a = v_alpha[cam, y, x]
            for ch in range(3):
                st[B_VF + ch * NPIX + p] = v_rgb[cam, y, x, ch]
                v_a -= v_rgb[cam, y, x, ch] * backgrounds[cam, ch]
            if a > F_ZERO:
                vd = v_depth[cam, y, x]
                st[B_VF + 3 * NPIX + p] = vd / max(a, F_TINY)
                if a >= F_TINY:
                    v_a -= vd * out_depth[cam, y, x] / a
            st[B_VA + p] = v_a * tr
            row_max[r] = max(row_max[r], cnt)
        k_max = max(k_max, row_max[r])
    return k_max


@njit(fastmath={"contract", "reassoc", "nsz"}, error_model="numpy", **JIT)
def _unblend_gaussian(st, row_max, gp, i, k, px0, py0, out):
    """Entry k (gp row i) of a tile, back to front: update the pixels' state st and write the
    entry's gradient, summed over the pixels, to out [NG]. Only the rows the Gaussian can reach
    and that have pixels whose count is above k are walked, as one run of pixels."""
    u, v, a, b, c, o = gp[i, GU], gp[i, GV], gp[i, GA], gp[i, GB], gp[i, GC], gp[i, GO]
    f0, f1, f2, f3 = gp[i, GF], gp[i, GF + 1], gp[i, GF + 2], gp[i, GF + 3]
    kf = np.float32(k)
    r0, r1 = max(int(gp[i, R0]), 0), min(int(gp[i, R1]), TILE_SIZE)
    while r0 < r1 and row_max[r0] <= k:
        r0 += 1
    while r1 > r0 and row_max[r1 - 1] <= k:
        r1 -= 1
    g_u = g_v = g_a = g_b = g_c = g_o = g_f0 = g_f1 = g_f2 = g_f3 = F_ZERO
    fx0, fy0 = np.float32(px0) + F_HALF, np.float32(py0) + F_HALF
    # unsigned pixel indices: numba then adds no negative-index wraparound, whose selects would
    # make the addresses non-affine and stop the loop from vectorising
    for p in range(np.uint64(r0 * TILE_SIZE), np.uint64(r1 * TILE_SIZE)):
        dx = u - (fx0 + np.float32(p & U_COL))      # exact: small integers and halves
        dy = v - (fy0 + np.float32(p >> U_ROW_SHIFT))
        sigma = F_HALF * (a * dx * dx + c * dy * dy) + b * dx * dy
        vis = exp_neg(sigma)
        raw = o * vis
        alpha = raw if raw < F_ALPHA_MAX else F_ALPHA_MAX
        # selects as arithmetic on 0/1 masks, as in _blend_gaussian
        ok = np.float32((sigma >= F_ZERO) & (alpha >= F_ALPHA_MIN) & (kf < st[U_CNT + p]))
        ra = F_ONE / (F_ONE - alpha)
        t_in = st[U_T + p]
        tr = t_in * ra * ok + t_in * (F_ONE - ok)     # transmittance in front of entry k
        w = alpha * tr * ok
        vf0, vf1, vf2, vf3 = st[U_VF0 + p], st[U_VF1 + p], st[U_VF2 + p], st[U_VF3 + p]
        fdot = f0 * vf0 + f1 * vf1 + f2 * vf2 + f3 * vf3
        beh = st[U_BEH + p]
        v_al = tr * fdot - ra * beh + st[U_VA + p] * ra
        st[U_T + p] = tr
        st[U_BEH + p] = beh + w * fdot
        g_f0 += w * vf0
        g_f1 += w * vf1
        g_f2 += w * vf2
        g_f3 += w * vf3
        # a capped alpha passes no gradient to opacity or shape
        live = ok * np.float32(raw <= F_ALPHA_MAX)
        v_sigma = -alpha * v_al * live
        g_u += v_sigma * (a * dx + b * dy)
        g_v += v_sigma * (c * dy + b * dx)
        g_a += v_sigma * dx * dx
        g_b += v_sigma * dx * dy
        g_c += v_sigma * dy * dy
        g_o += vis * v_al * live
    out[0] = g_u
    out[1] = g_v
    out[2] = F_HALF * g_a
    out[3] = g_b
    out[4] = F_HALF * g_c
    out[5] = g_o
    out[6] = g_f0
    out[7] = g_f1
    out[8] = g_f2
    out[9] = g_f3


@njit(parallel=True, **JIT)
def raster_bwd(tile_start, order, n_threads, counter, gp, backgrounds, width, height, tiles_x, tiles_y,
               out_depth, out_trans, out_count, v_rgb, v_alpha, v_depth, isect_grad):
    """Backward of raster_fwd. v_rgb [C,H,W,3], v_alpha [C,H,W], v_depth [C,H,W] -> isect_grad
    [M,NG] per intersection: d means2d (2), d conics (3), d opacity (1), d feats (4).
    (The background's gradient, sum of v_rgb * transmittance, is left to the caller.)

    Walks each tile's list back to front over all its pixels at once; a pixel joins once the
    walk reaches its last contributing entry. Transmittance is recovered by division from the
    final one, and `behind` holds sum_j w_j (f_j . v_f) over the entries behind the current one.
    Each intersection's row is written by the one thread that takes its tile, with its sums in
    the compiled code's fixed order, so no value depends on the thread count.
    """
    n_tiles = tiles_x * tiles_y
    counter[0] = 0
    for _ in prange(n_threads):
        st = np.empty(NS_BWD * NPIX, np.float32)
        row_max = np.empty(TILE_SIZE, np.int64)
        while True:
            t = next_tile(order, counter)
            if t < 0:
                break
            cam, tt = t // n_tiles, t % n_tiles
            ty, tx = tt // tiles_x, tt % tiles_x
            s0, n = tile_start[t], tile_start[t + 1] - tile_start[t]
            k_max = _load_bwd_state(st, row_max, cam, tx, ty, width, height, backgrounds, out_depth, out_trans,
                                    out_count, v_rgb, v_alpha, v_depth)
            for k in range(k_max - 1, -1, -1):
                _unblend_gaussian(st, row_max, gp, s0 + k, k, tx * TILE_SIZE, ty * TILE_SIZE, isect_grad[s0 + k])
            for k in range(k_max, n):
                isect_grad[s0 + k, :] = F_ZERO


@njit(**JIT)
def gather_grads(isect_gauss, isect_grad, out):
    """Sum per-intersection gradients [M,NG] into per-Gaussian rows out [G,NG] (zeroed here), in
    intersection order: the same sums in the same order on any thread count."""
    out[:] = 0.0
    for k in range(isect_gauss.shape[0]):
        g = isect_gauss[k]
        for j in range(NG):
            out[g, j] += isect_grad[k, j]
