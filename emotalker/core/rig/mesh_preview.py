"""A small z-buffer mesh rasteriser with Lambert shading, for previews and contact sheets.

Not the Gaussian renderer: it draws triangle meshes with per-vertex colours, to show
a FLAME-format rig (for example the procedural head) without any GPU or extra
dependency. Cameras follow the project convention (OpenCV: x right, y down,
z forward; `viewmat` world-to-camera 4x4, intrinsics `K` 3x3).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=False, nogil=True)
def _raster(xy, z, faces, width, height):
    """Nearest triangle per pixel. xy [V,2] pixel coords, z [V] depth -> face id [H,W] (-1 empty), bary [H,W,3]."""
    zbuf = np.full((height, width), np.inf)
    fid = np.full((height, width), -1, np.int64)
    bary = np.zeros((height, width, 3))
    for f in range(faces.shape[0]):
        a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
        if z[a] <= 0 or z[b] <= 0 or z[c] <= 0:
            continue
        x0, y0, x1, y1, x2, y2 = xy[a, 0], xy[a, 1], xy[b, 0], xy[b, 1], xy[c, 0], xy[c, 1]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if abs(area) < 1e-12:
            continue
        lo_x = max(int(np.floor(min(x0, x1, x2))), 0)
        hi_x = min(int(np.ceil(max(x0, x1, x2))), width - 1)
        lo_y = max(int(np.floor(min(y0, y1, y2))), 0)
        hi_y = min(int(np.ceil(max(y0, y1, y2))), height - 1)
        for py in range(lo_y, hi_y + 1):
            for px in range(lo_x, hi_x + 1):
                sx, sy = px + 0.5, py + 0.5
                w0 = ((x1 - sx) * (y2 - sy) - (x2 - sx) * (y1 - sy)) / area
                w1 = ((x2 - sx) * (y0 - sy) - (x0 - sx) * (y2 - sy)) / area
                w2 = 1.0 - w0 - w1
                if w0 < 0 or w1 < 0 or w2 < 0:
                    continue
                depth = w0 * z[a] + w1 * z[b] + w2 * z[c]
                if depth < zbuf[py, px]:
                    zbuf[py, px] = depth
                    fid[py, px] = f
                    bary[py, px, 0] = w0
                    bary[py, px, 1] = w1
                    bary[py, px, 2] = w2
    return fid, bary


def vertex_normals(verts, faces):
    """Area-weighted vertex normals. verts [V,3], faces [F,3] -> [V,3] unit."""
    fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    n = np.zeros_like(verts)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def look_at(eye, target, up=(0.0, 1.0, 0.0)):
    """World-to-camera 4x4 (OpenCV axes) for a camera at `eye` looking at `target`."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    fwd = target - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    R = np.stack([right, down, fwd])
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = -R @ eye
    return M


def rasterize(verts, faces, viewmat, K, width: int, height: int):
    """Which face covers each pixel. verts [V,3] world -> face id [H,W] (-1 empty), bary [H,W,3]."""
    cam = verts @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = cam[:, 2]
    uv = cam[:, :2] / np.maximum(z[:, None], 1e-9) * np.array([K[0, 0], K[1, 1]]) + K[:2, 2]
    return _raster(np.ascontiguousarray(uv), np.ascontiguousarray(z), np.ascontiguousarray(faces, dtype=np.int64), width, height)


def render_mesh(verts, faces, colors, viewmat, K, width: int, height: int, background=(1.0, 1.0, 1.0),
                lights=(((-0.5, 0.6, 0.8), 0.75), ((0.7, 0.2, 0.4), 0.25)), ambient: float = 0.22):
    """Shaded image [H,W,3] in 0..1. verts [V,3], faces [F,3], colors [V,3] (0..1) per vertex.

    Lambert shading with directional `lights` (world direction towards the light, strength)
    plus ambient; normals and colours are interpolated across each triangle.
    """
    verts = np.asarray(verts, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    fid, bary = rasterize(verts, faces, viewmat, K, width, height)
    img = np.empty((height, width, 3))
    img[:] = background
    hit = fid >= 0
    tri = faces[fid[hit]]
    w = bary[hit][:, :, None]
    nrm = vertex_normals(verts, faces)
    n = (nrm[tri] * w).sum(1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    # Two-sided: a normal facing away from the camera is flipped (inside of the mouth).
    eye = -viewmat[:3, :3].T @ viewmat[:3, 3]
    pts = (verts[tri] * w).sum(1)
    flip = ((eye - pts) * n).sum(1) < 0
    n[flip] *= -1
    shade = np.full(len(n), ambient)
    for d, s in lights:
        d = np.asarray(d, dtype=np.float64)
        shade += s * np.clip(n @ (d / np.linalg.norm(d)), 0, None)
    col = (np.asarray(colors, dtype=np.float64)[tri] * w).sum(1)
    img[hit] = np.clip(col * shade[:, None], 0, 1)
    return img
