"""The procedural head's shape as a signed distance function built from smooth primitives.

Every function takes points `p [N, 3]` (metres, FLAME axes: +X subject's left,
+Y up, +Z out of the face) and returns signed distances `[N]` (negative inside).
Primitive distances are bounds, not exact distances; only the zero set and its
smoothness matter, because the surface is found by root-finding along rays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Anatomy:
    """Landmarks of the neutral head (metres, FLAME axes)."""

    ray_centre: tuple = (0.0, -0.004, -0.004)
    """The point inside the head that the skin-sampling rays start from."""
    eye_x: float = 0.0315
    """Distance of each eye's centre from the midline; the left eye is at +eye_x."""
    eye_y: float = 0.029
    """Height of the eyes' centres."""
    eye_z: float = 0.0625
    """Depth of the eyes' centres (towards the front)."""
    eye_r: float = 0.0120
    """Eyeball radius."""
    lid_gap: float = 0.0018
    """Lid skin thickness over the eyeball."""
    mouth_y: float = -0.0405
    """Height of the lip line."""
    mouth_z: float = 0.0905
    """Front of the lips at the lip line."""
    mouth_half_width: float = 0.0245
    """Half the mouth slit's width, centre to corner."""
    neck_bottom: float = -0.150
    """Height of the neck's cut base."""

    def eye_centre(self, side: int) -> np.ndarray:
        """side +1: subject's left (+X), -1: right."""
        return np.array([side * self.eye_x, self.eye_y, self.eye_z])


def ellipsoid(p, c, r):
    r = np.asarray(r, dtype=np.float64)
    q = (p - np.asarray(c)) / r
    k0 = np.sqrt(np.einsum("ni,ni->n", q, q))
    q = q / r
    k1 = np.sqrt(np.einsum("ni,ni->n", q, q))
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-9)


def sphere(p, c, r):
    q = p - np.asarray(c)
    return np.sqrt(np.einsum("ni,ni->n", q, q)) - r


def capsule(p, a, b, r):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    pa, ba = p - a, b - a
    h = np.clip((pa @ ba) / (ba @ ba), 0.0, 1.0)
    return np.linalg.norm(pa - h[:, None] * ba, axis=-1) - r


def smin(a, b, k):
    """Polynomial smooth minimum (a fillet of size ~k where the shapes meet)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def smax(a, b, k):
    return -smin(-a, -b, k)


def mirrored(fn, p, *args):
    """Union of a primitive and its mirror image across x = 0 (left/right pairs)."""
    q = p.copy()
    q[:, 0] = np.abs(q[:, 0])
    return fn(q, *args)


def neck(p, a: Anatomy):
    """A vertical elliptic cylinder from the neck base into the head, bottom edge rounded."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    rx, rz, zc = 0.050, 0.054, -0.014
    side = (np.sqrt((x / rx) ** 2 + ((z - zc) / rz) ** 2) - 1.0) * min(rx, rz)
    bottom = a.neck_bottom - y
    top = y - 0.0
    return smax(smax(side, bottom, 0.008), top, 0.01)


def head_sdf(p, a: Anatomy = Anatomy()):
    """Signed distance of the outer skin (eyeballs excluded), p [N,3] -> [N]."""
    d = ellipsoid(p, (0.0, 0.026, -0.012), (0.0745, 0.094, 0.097))  # cranium
    d = smin(d, ellipsoid(p, (0.0, -0.022, 0.012), (0.060, 0.072, 0.074)), 0.02)  # mid face
    d = smin(d, mirrored(ellipsoid, p, (0.026, -0.062, 0.016), (0.028, 0.033, 0.050)), 0.022)  # mandible
    d = smin(d, ellipsoid(p, (0.0, -0.080, 0.062), (0.021, 0.018, 0.019)), 0.012)  # chin
    d = smin(d, neck(p, a), 0.02)
    d = smin(d, mirrored(ellipsoid, p, (0.040, 0.006, 0.058), (0.018, 0.012, 0.020)), 0.016)  # cheekbones
    d = smin(d, ellipsoid(p, (0.0, 0.047, 0.066), (0.050, 0.013, 0.022)), 0.02)  # brow ridge
    d = smin(d, mirrored(ellipsoid, p, (0.032, -0.026, 0.052), (0.022, 0.024, 0.024)), 0.02)  # cheek fat
    # Eye sockets carved, then the lids: a shell just outside each eyeball.
    d = smax(d, -mirrored(ellipsoid, p, (a.eye_x, a.eye_y + 0.001, a.eye_z + 0.022), (0.019, 0.0135, 0.017)), 0.012)
    d = smin(d, mirrored(sphere, p, (a.eye_x, a.eye_y, a.eye_z), a.eye_r + a.lid_gap), 0.004)
    # Nose: bridge, tip, wings, base.
    nose = capsule(p, (0.0, 0.026, 0.080), (0.0, -0.001, 0.1035), 0.0050)
    nose = smin(nose, ellipsoid(p, (0.0, -0.006, 0.1015), (0.0092, 0.0085, 0.0095)), 0.006)
    nose = smin(nose, mirrored(ellipsoid, p, (0.0118, -0.0118, 0.0895), (0.0072, 0.0062, 0.0078)), 0.005)
    nose = smin(nose, ellipsoid(p, (0.0, -0.0138, 0.0945), (0.0062, 0.0042, 0.0088)), 0.004)
    d = smin(d, nose, 0.008)
    # Lips: two rolls meeting in a sharp crease at the lip line.
    my, mz = a.mouth_y, a.mouth_z
    upper = ellipsoid(p, (0.0, my + 0.0055, mz - 0.0085), (0.0215, 0.0068, 0.0095))
    lower = ellipsoid(p, (0.0, my - 0.0060, mz - 0.0095), (0.0195, 0.0068, 0.0095))
    d = smin(d, np.minimum(upper, lower), 0.009)
    d = smax(d, -ellipsoid(p, (0.0, my - 0.0205, mz - 0.004), (0.022, 0.0045, 0.006)), 0.006)  # mentolabial sulcus
    d = smin(d, mirrored(ellipsoid, p, (0.0725, 0.008, -0.014), (0.012, 0.029, 0.017)), 0.007)  # ears
    return d


def project_rays(dirs, a: Anatomy = Anatomy(), r_max: float = 0.20, step: float = 0.003, iters: int = 18):
    """Outermost skin point along each ray from `a.ray_centre`. dirs [N,3] unit -> points [N,3]."""
    c = np.asarray(a.ray_centre)
    rs = np.arange(r_max, 0.0, -step)
    out = np.empty((len(dirs), 3))
    for s in range(0, len(dirs), 1024):
        d = dirs[s : s + 1024]
        pts = c + d[:, None, :] * rs[None, :, None]
        inside = head_sdf(pts.reshape(-1, 3), a).reshape(len(d), len(rs)) < 0
        if not inside.any(1).all():
            raise RuntimeError("a ray missed the procedural head; the SDF is broken")
        k = inside.argmax(1)
        lo, hi = rs[k], rs[np.maximum(k - 1, 0)]  # lo inside, hi outside
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            ins = head_sdf(c + d * mid[:, None], a) < 0
            lo, hi = np.where(ins, mid, lo), np.where(ins, hi, mid)
        out[s : s + 1024] = c + d * (0.5 * (lo + hi))[:, None]
    return out


def direction(theta, phi):
    """Ray direction for polar angle theta (0 = up) and azimuth phi (0 = +Z front, pi/2 = +X). -> [..., 3]"""
    st = np.sin(theta)
    return np.stack([st * np.sin(phi), np.cos(theta), st * np.cos(phi)], -1)
