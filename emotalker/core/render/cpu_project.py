"""Compiled (numba) EWA projection and SH colour kernels, forward and hand-written backward.

Per Gaussian work only (O(C*N)); arithmetic is done in float64 and stored as
float32. Loops run in parallel over Gaussians, so each thread owns the gradient
rows it writes (cameras are looped inside) and no atomics are needed.
The maths matches projection.py / sh.py, which autograd differentiates for the
reference backend; tests compare the two. `ortho` selects gsplat's orthographic
camera (pixel = fx x + cx, fy y + cy; a constant Jacobian) instead of the pinhole.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from emotalker.core.render.common import EPS2D, RADIUS_SIGMAS
from emotalker.core.render.sh import SH_C0, SH_C1, SH_C2, SH_C3

JIT = dict(cache=True, nogil=True)


@njit(**JIT)
def _mm(a, b):
    """Product of two 3x3 matrices held as row-major 9-tuples."""
    return (a[0] * b[0] + a[1] * b[3] + a[2] * b[6], a[0] * b[1] + a[1] * b[4] + a[2] * b[7],
            a[0] * b[2] + a[1] * b[5] + a[2] * b[8],
            a[3] * b[0] + a[4] * b[3] + a[5] * b[6], a[3] * b[1] + a[4] * b[4] + a[5] * b[7],
            a[3] * b[2] + a[4] * b[5] + a[5] * b[8],
            a[6] * b[0] + a[7] * b[3] + a[8] * b[6], a[6] * b[1] + a[7] * b[4] + a[8] * b[7],
            a[6] * b[2] + a[7] * b[5] + a[8] * b[8])


@njit(**JIT)
def _tr(a):
    return (a[0], a[3], a[6], a[1], a[4], a[7], a[2], a[5], a[8])


@njit(**JIT)
def _add(a, b):
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4], a[5] + b[5],
            a[6] + b[6], a[7] + b[7], a[8] + b[8])


@njit(**JIT)
def _quat_frame(quats, scales, g):
    """Unit quaternion (w,x,y,z), the raw norm, R (9-tuple), M = R diag(s) and Sigma = M M^T."""
    w, x, y, z = float(quats[g, 0]), float(quats[g, 1]), float(quats[g, 2]), float(quats[g, 3])
    qn = max(math.sqrt(w * w + x * x + y * y + z * z), 1e-12)
    w, x, y, z = w / qn, x / qn, y / qn, z / qn
    r = (1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y),
         2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x),
         2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y))
    sx, sy, sz = float(scales[g, 0]), float(scales[g, 1]), float(scales[g, 2])
    m = (r[0] * sx, r[1] * sy, r[2] * sz, r[3] * sx, r[4] * sy, r[5] * sz, r[6] * sx, r[7] * sy, r[8] * sz)
    return (w, x, y, z), qn, r, m, _mm(m, _tr(m))


@njit(**JIT)
def _camera(viewmats, ks, c, width, height):
    """World-to-camera rotation (9-tuple), translation, intrinsics and the Jacobian clamp limits."""
    w = (float(viewmats[c, 0, 0]), float(viewmats[c, 0, 1]), float(viewmats[c, 0, 2]),
         float(viewmats[c, 1, 0]), float(viewmats[c, 1, 1]), float(viewmats[c, 1, 2]),
         float(viewmats[c, 2, 0]), float(viewmats[c, 2, 1]), float(viewmats[c, 2, 2]))
    t = (float(viewmats[c, 0, 3]), float(viewmats[c, 1, 3]), float(viewmats[c, 2, 3]))
    fx, fy, cx, cy = float(ks[c, 0, 0]), float(ks[c, 1, 1]), float(ks[c, 0, 2]), float(ks[c, 1, 2])
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lims = ((width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x,
            (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y)
    return w, t, (fx, fy, cx, cy), lims


@njit(**JIT)
def _to_camera(w, t, means, g):
    mx, my, mz = float(means[g, 0]), float(means[g, 1]), float(means[g, 2])
    return (w[0] * mx + w[1] * my + w[2] * mz + t[0], w[3] * mx + w[4] * my + w[5] * mz + t[1],
            w[6] * mx + w[7] * my + w[8] * mz + t[2])


@njit(**JIT)
def _jacobian(p, intr, lims, ortho):
    """Perspective Jacobian (as a 3x3 with a zero last row) with x/z, y/z clamped; also tx, ty.
    Orthographic: the constant diag(fx, fy) (tx, ty unused)."""
    x, y, z = p
    fx, fy = intr[0], intr[1]
    if ortho:
        return (fx, 0.0, 0.0, 0.0, fy, 0.0, 0.0, 0.0, 0.0), x, y
    tx = z * min(lims[0], max(-lims[1], x / z))
    ty = z * min(lims[2], max(-lims[3], y / z))
    jac = (fx / z, 0.0, -fx * tx / (z * z), 0.0, fy / z, -fy * ty / (z * z), 0.0, 0.0, 0.0)
    return jac, tx, ty


@njit(**JIT)
def _pixel(p, intr, ortho):
    """Where the camera-space point p lands on the image."""
    x, y, z = p
    if ortho:
        return intr[0] * x + intr[2], intr[1] * y + intr[3]
    return intr[0] * x / z + intr[2], intr[1] * y / z + intr[3]


@njit(parallel=True, **JIT)
def project_fwd(means, quats, scales, viewmats, ks, width, height, near, far, antialiased, ortho,
                means2d, conics, depths, comps, radii):
    """means [N,3], quats [N,4], scales [N,3], viewmats [C,4,4], ks [C,3,3] -> fills
    means2d [C,N,2], conics [C,N,3], depths [C,N], comps [C,N], radii [C,N] (0 = culled)."""
    n_cams, n = viewmats.shape[0], means.shape[0]
    for g in prange(n):
        _, _, _, _, cov = _quat_frame(quats, scales, g)
        for c in range(n_cams):
            w, t, intr, lims = _camera(viewmats, ks, c, width, height)
            p = _to_camera(w, t, means, g)
            x, y, z = p
            radii[c, g] = 0
            depths[c, g] = z
            means2d[c, g, 0] = 0.0
            means2d[c, g, 1] = 0.0
            conics[c, g, 0] = 0.0
            conics[c, g, 1] = 0.0
            conics[c, g, 2] = 0.0
            comps[c, g] = 0.0
            if not (z >= near and z <= far):
                continue
            jac, _, _ = _jacobian(p, intr, lims, ortho)
            cov2d = _mm(_mm(jac, _mm(_mm(w, cov), _tr(w))), _tr(jac))
            a0, b, c0 = cov2d[0], cov2d[1], cov2d[4]
            a, cc = a0 + EPS2D, c0 + EPS2D
            det = a * cc - b * b
            if det <= 0.0:
                continue
            u, v = _pixel(p, intr, ortho)
            half = 0.5 * (a + cc)
            lam = half + math.sqrt(max(0.01, half * half - det))
            radius = math.ceil(RADIUS_SIGMAS * math.sqrt(lam))
            if radius <= 0 or u + radius <= 0 or u - radius >= width or v + radius <= 0 or v - radius >= height:
                continue
            radii[c, g] = radius
            means2d[c, g, 0] = u
            means2d[c, g, 1] = v
            conics[c, g, 0] = cc / det
            conics[c, g, 1] = -b / det
            conics[c, g, 2] = a / det
            comps[c, g] = math.sqrt(max(0.0, (a0 * c0 - b * b) / det)) if antialiased else 1.0


@njit(**JIT)
def _pinhole_point_grad(p, intr, lims, tx, ty, vu, vv, vz, gj00, gj02, gj11, gj12):
    """dL/dp of the camera-space point through the pinhole's pixel (vu, vv), depth (vz) and Jacobian
    (gj.. = dL/dJ entries; a clamped x/z or y/z moves with z alone)."""
    x, y, z = p
    fx, fy = intr[0], intr[1]
    x_free = x / z >= -lims[1] and x / z <= lims[0]
    y_free = y / z >= -lims[3] and y / z <= lims[2]
    z2, z3 = z * z, z * z * z
    gpx = vu * fx / z
    gpy = vv * fy / z
    gpz = vz - (vu * fx * x + vv * fy * y) / z2
    gpz += (-fx * gj00 - fy * gj11) / z2 + 2.0 * (fx * tx * gj02 + fy * ty * gj12) / z3
    g_tx = -fx * gj02 / z2
    g_ty = -fy * gj12 / z2
    if x_free:
        gpx += g_tx
    else:
        gpz += g_tx * tx / z
    if y_free:
        gpy += g_ty
    else:
        gpz += g_ty * ty / z
    return gpx, gpy, gpz


@njit(parallel=True, **JIT)
def project_bwd(means, quats, scales, viewmats, ks, width, height, antialiased, ortho, radii,
                v_means2d, v_conics, v_depths, v_comps, v_means, v_quats, v_scales):
    """Backward of project_fwd: v_means2d [C,N,2], v_conics [C,N,3], v_depths [C,N],
    v_comps [C,N] -> fills v_means [N,3], v_quats [N,4], v_scales [N,3] (culled pairs give 0)."""
    n_cams, n = viewmats.shape[0], means.shape[0]
    for g in prange(n):
        q, qn, r, m, cov = _quat_frame(quats, scales, g)
        g_cov = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)   # dL/dSigma (world), symmetric
        gmx, gmy, gmz = 0.0, 0.0, 0.0
        for c in range(n_cams):
            if radii[c, g] <= 0:
                continue
            w, t, intr, lims = _camera(viewmats, ks, c, width, height)
            p = _to_camera(w, t, means, g)
            fx, fy = intr[0], intr[1]
            jac, tx, ty = _jacobian(p, intr, lims, ortho)
            cov_cam = _mm(_mm(w, cov), _tr(w))
            cov2d = _mm(_mm(jac, cov_cam), _tr(jac))
            a0, b, c0 = cov2d[0], cov2d[1], cov2d[4]
            a, cc = a0 + EPS2D, c0 + EPS2D
            det = a * cc - b * b
            # conic K = inverse of the dilated covariance: dL/dS = -K G_K K, G_K symmetric
            k00, k01, k11 = cc / det, -b / det, a / det
            ga, gb, gc = float(v_conics[c, g, 0]), 0.5 * float(v_conics[c, g, 1]), float(v_conics[c, g, 2])
            t00 = k00 * ga + k01 * gb
            t01 = k00 * gb + k01 * gc
            t10 = k01 * ga + k11 * gb
            t11 = k01 * gb + k11 * gc
            g00 = -(t00 * k00 + t01 * k01)
            g01 = -(t00 * k01 + t01 * k11)
            g10 = -(t10 * k00 + t11 * k01)
            g11 = -(t10 * k01 + t11 * k11)
            if antialiased:
                ratio = (a0 * c0 - b * b) / det
                comp = math.sqrt(max(0.0, ratio))
                if comp > 0.0:
                    s = float(v_comps[c, g]) * 0.5 / comp / det
                    # d det(X) / dX = adj(X), symmetric entries treated independently
                    g00 += s * (c0 - ratio * cc)
                    g11 += s * (a0 - ratio * a)
                    g01 += s * (ratio - 1.0) * b
                    g10 += s * (ratio - 1.0) * b
            g2 = (g00, g01, 0.0, g10, g11, 0.0, 0.0, 0.0, 0.0)
            # cov2d = J cov_cam J^T
            g_cov_cam = _mm(_mm(_tr(jac), g2), jac)
            g_jac = _mm(_mm(g2, jac), cov_cam)      # half of dL/dJ
            gj00, gj02, gj11, gj12 = 2.0 * g_jac[0], 2.0 * g_jac[2], 2.0 * g_jac[4], 2.0 * g_jac[5]
            vu, vv, vz = float(v_means2d[c, g, 0]), float(v_means2d[c, g, 1]), float(v_depths[c, g])
            if ortho:  # pixel = (fx x + cx, fy y + cy) and J is constant: z only carries the depth's gradient
                gpx, gpy, gpz = vu * fx, vv * fy, vz
            else:
                gpx, gpy, gpz = _pinhole_point_grad(p, intr, lims, tx, ty, vu, vv, vz, gj00, gj02, gj11, gj12)
            gmx += w[0] * gpx + w[3] * gpy + w[6] * gpz
            gmy += w[1] * gpx + w[4] * gpy + w[7] * gpz
            gmz += w[2] * gpx + w[5] * gpy + w[8] * gpz
            g_cov = _add(g_cov, _mm(_mm(_tr(w), g_cov_cam), w))
        # Sigma = M M^T with M = R diag(s)
        g_m = _mm(g_cov, m)
        g_m = (2.0 * g_m[0], 2.0 * g_m[1], 2.0 * g_m[2], 2.0 * g_m[3], 2.0 * g_m[4], 2.0 * g_m[5],
               2.0 * g_m[6], 2.0 * g_m[7], 2.0 * g_m[8])
        s3 = (float(scales[g, 0]), float(scales[g, 1]), float(scales[g, 2]))
        for j in range(3):
            v_scales[g, j] = g_m[j] * r[j] + g_m[3 + j] * r[3 + j] + g_m[6 + j] * r[6 + j]
        g_r = (g_m[0] * s3[0], g_m[1] * s3[1], g_m[2] * s3[2], g_m[3] * s3[0], g_m[4] * s3[1],
               g_m[5] * s3[2], g_m[6] * s3[0], g_m[7] * s3[1], g_m[8] * s3[2])
        qw, qx, qy, qz = q
        vw = 2.0 * (-qz * g_r[1] + qy * g_r[2] + qz * g_r[3] - qx * g_r[5] - qy * g_r[6] + qx * g_r[7])
        vx = 2.0 * (qy * g_r[1] + qz * g_r[2] + qy * g_r[3] - 2.0 * qx * g_r[4] - qw * g_r[5]
                    + qz * g_r[6] + qw * g_r[7] - 2.0 * qx * g_r[8])
        vy = 2.0 * (-2.0 * qy * g_r[0] + qx * g_r[1] + qw * g_r[2] + qx * g_r[3] + qz * g_r[5]
                    - qw * g_r[6] + qz * g_r[7] - 2.0 * qy * g_r[8])
        vz = 2.0 * (-2.0 * qz * g_r[0] - qw * g_r[1] + qx * g_r[2] + qw * g_r[3] - 2.0 * qz * g_r[4]
                    + qy * g_r[5] + qx * g_r[6] + qy * g_r[7])
        dot = qw * vw + qx * vx + qy * vy + qz * vz
        v_quats[g, 0] = (vw - qw * dot) / qn
        v_quats[g, 1] = (vx - qx * dot) / qn
        v_quats[g, 2] = (vy - qy * dot) / qn
        v_quats[g, 3] = (vz - qz * dot) / qn
        v_means[g, 0] = gmx
        v_means[g, 1] = gmy
        v_means[g, 2] = gmz


@njit(**JIT)
def _sh_basis(degree, x, y, z, out):
    """Fill out[:(degree+1)^2] with the real SH basis at the unit direction (x, y, z)."""
    out[0] = SH_C0
    if degree >= 1:
        out[1] = -SH_C1 * y
        out[2] = SH_C1 * z
        out[3] = -SH_C1 * x
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out[4] = SH_C2[0] * x * y
        out[5] = SH_C2[1] * y * z
        out[6] = SH_C2[2] * (2.0 * zz - xx - yy)
        out[7] = SH_C2[3] * x * z
        out[8] = SH_C2[4] * (xx - yy)
    if degree >= 3:
        out[9] = SH_C3[0] * y * (3.0 * xx - yy)
        out[10] = SH_C3[1] * x * y * z
        out[11] = SH_C3[2] * y * (4.0 * zz - xx - yy)
        out[12] = SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy)
        out[13] = SH_C3[4] * x * (4.0 * zz - xx - yy)
        out[14] = SH_C3[5] * z * (xx - yy)
        out[15] = SH_C3[6] * x * (xx - 3.0 * yy)


@njit(**JIT)
def _sh_basis_grad(degree, x, y, z, gx, gy, gz):
    """Fill g{x,y,z}[k] = d basis_k / d{x,y,z} (directions treated as free variables)."""
    for k in range((degree + 1) ** 2):
        gx[k] = 0.0
        gy[k] = 0.0
        gz[k] = 0.0
    if degree >= 1:
        gy[1] = -SH_C1
        gz[2] = SH_C1
        gx[3] = -SH_C1
    if degree >= 2:
        gx[4], gy[4] = SH_C2[0] * y, SH_C2[0] * x
        gy[5], gz[5] = SH_C2[1] * z, SH_C2[1] * y
        gx[6], gy[6], gz[6] = -2.0 * SH_C2[2] * x, -2.0 * SH_C2[2] * y, 4.0 * SH_C2[2] * z
        gx[7], gz[7] = SH_C2[3] * z, SH_C2[3] * x
        gx[8], gy[8] = 2.0 * SH_C2[4] * x, -2.0 * SH_C2[4] * y
    if degree >= 3:
        xx, yy, zz = x * x, y * y, z * z
        gx[9], gy[9] = SH_C3[0] * 6.0 * x * y, SH_C3[0] * 3.0 * (xx - yy)
        gx[10], gy[10], gz[10] = SH_C3[1] * y * z, SH_C3[1] * x * z, SH_C3[1] * x * y
        gx[11], gy[11], gz[11] = -2.0 * SH_C3[2] * x * y, SH_C3[2] * (4.0 * zz - xx - 3.0 * yy), 8.0 * SH_C3[2] * y * z
        gx[12], gy[12], gz[12] = -6.0 * SH_C3[3] * x * z, -6.0 * SH_C3[3] * y * z, SH_C3[3] * (6.0 * zz - 3.0 * xx - 3.0 * yy)
        gx[13], gy[13], gz[13] = SH_C3[4] * (4.0 * zz - 3.0 * xx - yy), -2.0 * SH_C3[4] * x * y, 8.0 * SH_C3[4] * x * z
        gx[14], gy[14], gz[14] = 2.0 * SH_C3[5] * x * z, -2.0 * SH_C3[5] * y * z, SH_C3[5] * (xx - yy)
        gx[15], gy[15] = SH_C3[6] * 3.0 * (xx - yy), -6.0 * SH_C3[6] * x * y


@njit(parallel=True, **JIT)
def sh_fwd(degree, sh, means, campos, colors):
    """sh [N,K,3], means [N,3], campos [C,3] -> fills colors [C,N,3] = max(SH(dir) + 0.5, 0)."""
    n_cams, n = campos.shape[0], means.shape[0]
    nk = (degree + 1) ** 2
    for g in prange(n):
        basis = np.empty(16)
        for c in range(n_cams):
            dx = float(means[g, 0]) - float(campos[c, 0])
            dy = float(means[g, 1]) - float(campos[c, 1])
            dz = float(means[g, 2]) - float(campos[c, 2])
            inv = 1.0 / max(math.sqrt(dx * dx + dy * dy + dz * dz), 1e-12)
            _sh_basis(degree, dx * inv, dy * inv, dz * inv, basis)
            for ch in range(3):
                acc = 0.5
                for k in range(nk):
                    acc += basis[k] * sh[g, k, ch]
                colors[c, g, ch] = max(acc, 0.0)


@njit(parallel=True, **JIT)
def sh_bwd(degree, sh, means, campos, v_colors, v_sh, v_means):
    """Backward of sh_fwd: v_colors [C,N,3] -> fills v_sh [N,K,3] and v_means [N,3]
    (overwritten; the caller adds the projection's share)."""
    n_cams, n = campos.shape[0], means.shape[0]
    nk = (degree + 1) ** 2
    for g in prange(n):
        basis = np.empty(16)
        gx = np.empty(16)
        gy = np.empty(16)
        gz = np.empty(16)
        for k in range(v_sh.shape[1]):
            for ch in range(3):
                v_sh[g, k, ch] = 0.0
        vmx, vmy, vmz = 0.0, 0.0, 0.0
        for c in range(n_cams):
            dx = float(means[g, 0]) - float(campos[c, 0])
            dy = float(means[g, 1]) - float(campos[c, 1])
            dz = float(means[g, 2]) - float(campos[c, 2])
            norm = max(math.sqrt(dx * dx + dy * dy + dz * dz), 1e-12)
            x, y, z = dx / norm, dy / norm, dz / norm
            _sh_basis(degree, x, y, z, basis)
            if degree >= 1:
                _sh_basis_grad(degree, x, y, z, gx, gy, gz)
            vdx, vdy, vdz = 0.0, 0.0, 0.0
            for ch in range(3):
                vc = float(v_colors[c, g, ch])
                if vc == 0.0:
                    continue
                acc = 0.5
                for k in range(nk):
                    acc += basis[k] * sh[g, k, ch]
                if acc < 0.0:
                    continue  # clamped to 0: no gradient
                for k in range(nk):
                    v_sh[g, k, ch] += vc * basis[k]
                if degree >= 1:
                    for k in range(1, nk):
                        coef = vc * sh[g, k, ch]
                        vdx += coef * gx[k]
                        vdy += coef * gy[k]
                        vdz += coef * gz[k]
            # through the normalisation dir = d / |d|
            dot = x * vdx + y * vdy + z * vdz
            vmx += (vdx - x * dot) / norm
            vmy += (vdy - y * dot) / norm
            vmz += (vdz - z * dot) / norm
        v_means[g, 0] = vmx
        v_means[g, 1] = vmy
        v_means[g, 2] = vmz
