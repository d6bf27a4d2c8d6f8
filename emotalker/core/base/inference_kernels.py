"""Compiled (numba) per-Gaussian kernels for evaluating frames without autograd (the bake).

Evaluating a frame of 20k Gaussians in plain torch takes some sixty small
tensor operations (quaternion products, 3x3 products per Gaussian, gathers,
concatenations), each a pass over memory with its own call overhead. Here each
Gaussian's work is done in one pass, in parallel over Gaussians (frames in
turn, so that each thread streams through contiguous rows). The maths is that
of the differentiable torch code, which stays the specification:
`GaussianBlendshapes.evaluate` (Stage 1), `FlameRig.skin`, `interpolate_batched`
and `emotion.apply_offsets` (Stage 2); tests compare the two paths.

Callers use them where `applicable` (under torch.inference_mode, on the CPU) and call
them through `run_parallel`, which runs them on the run's thread count (`threads.kernel_launch`).
Each output element is computed by one thread in a fixed order, so the results do not depend
on that count (see threads.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange

from emotalker.core.base.threads import kernel_launch

# Float32 throughout, as the torch code; "contract" lets LLVM fuse multiply-adds.
JIT = dict(cache=True, nogil=True, fastmath={"contract"})


def applicable(*tensors: torch.Tensor) -> bool:
    """Whether to use the kernels on these tensors: under torch.inference_mode, on the CPU, float32.

    Only inference mode (the bake, the worker), not any no-grad code: its outputs can never
    reach autograd, and training and its no-grad evaluations keep the torch arithmetic bit for bit.
    """
    return torch.is_inference_mode_enabled() and all(
        t.device.type == "cpu" and (t.dtype == torch.float32 or not t.is_floating_point()) for t in tensors)


def run_parallel(kernel, *args) -> None:
    """Run a parallel kernel on the run's thread count (`--threads`), also inside a `single_threaded` region."""
    with kernel_launch():
        kernel(*args)


@njit(**JIT)
def _normalized(w, x, y, z):
    """A quaternion divided by max(norm, 1e-12), as torch's F.normalize does."""
    n = max(math.sqrt(w * w + x * x + y * y + z * z), np.float32(1e-12))
    return w / n, x / n, y / n, z / n


@njit(**JIT)
def _quat_multiply(a, b):
    """Hamilton product a * b of wxyz 4-tuples (as quaternion.quat_multiply)."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return (aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw)


@njit(**JIT)
def _quat_to_matrix(q):
    """Unit quaternion -> rotation matrix as a row-major 9-tuple (as quaternion.quat_to_matrix)."""
    w, x, y, z = q
    return (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y))


@njit(**JIT)
def _bound_point(verts, b, tri, bary):
    """The point with barycentrics bary [3] on the triangle of vertex ids tri [3] of mesh verts[b] [V,3], a 3-tuple."""
    i0, i1, i2 = tri[0], tri[1], tri[2]
    w0, w1, w2 = bary[0], bary[1], bary[2]
    return (w0 * verts[b, i0, 0] + w1 * verts[b, i1, 0] + w2 * verts[b, i2, 0],
            w0 * verts[b, i0, 1] + w1 * verts[b, i1, 1] + w2 * verts[b, i2, 1],
            w0 * verts[b, i0, 2] + w1 * verts[b, i1, 2] + w2 * verts[b, i2, 2])


@njit(**JIT)
def _rotate_band1(sh, r):
    """Turn SH coefficients 1..3 of one Gaussian's sh [K, 3] in place by rotation r (9-tuple), as
    blendshapes.rotate_sh_band1.

    The band-1 basis is C1 (-y, z, -x), so the coefficients turn by M = P R P^T, P the
    signed permutation taking (x, y, z) to (-y, z, -x): M[i][j] = s_i s_j R[p_i][p_j].
    """
    m = (r[4], -r[5], r[3],
         -r[7], r[8], -r[6],
         r[1], -r[2], r[0])
    for c in range(3):
        s1, s2, s3 = sh[1, c], sh[2, c], sh[3, c]
        sh[1, c] = m[0] * s1 + m[1] * s2 + m[2] * s3
        sh[2, c] = m[3] * s1 + m[4] * s2 + m[5] * s3
        sh[3, c] = m[6] * s1 + m[7] * s2 + m[8] * s3


@njit(parallel=True, **JIT)
def skin_points(points, deviation, weights, out):
    """Linear blend skinning, as flame.FlameRig.skin: points [B,V,3], weights [V,J] -> out [B,V,3].

    deviation [B,J,12]: each transform's top three rows minus the identity's, A_j[:3] - I[:3],
    row-major; the blend D = sum_j w_j (A_j - I) moves p to p + D[:, :3] p + D[:, 3].
    """
    B, V, J = points.shape[0], points.shape[1], weights.shape[1]
    for b in range(B):
        for v in prange(V):
            px, py, pz = points[b, v, 0], points[b, v, 1], points[b, v, 2]
            for r in range(3):
                d0 = d1 = d2 = d3 = np.float32(0.0)
                for j in range(J):
                    w = weights[v, j]
                    d0 += w * deviation[b, j, 4 * r]
                    d1 += w * deviation[b, j, 4 * r + 1]
                    d2 += w * deviation[b, j, 4 * r + 2]
                    d3 += w * deviation[b, j, 4 * r + 3]
                out[b, v, r] = points[b, v, r] + (d0 * px + d1 * py + d2 * pz) + d3


@njit(parallel=True, **JIT)
def interpolate_points(values, tri, bary, out):
    """Barycentric interpolation, as binding.interpolate_batched: values [B,V,3], tri [N,3] vertex ids,
    bary [N,3] -> out [B,N,3]."""
    for b in range(values.shape[0]):
        for n in prange(tri.shape[0]):
            out[b, n, 0], out[b, n, 1], out[b, n, 2] = _bound_point(values, b, tri[n], bary[n])


@njit(**JIT)
def _blended_joints(rot, qj, lbs, b, n):
    """Gaussian n's skinning matrix L = sum_j w_nj R_j (9-tuple) and pose quaternion normalise(sum_j w_nj q_j)
    in frame b: rot [B,J,3,3], qj [B,J,4], lbs [N,J]."""
    l0 = l1 = l2 = l3 = l4 = l5 = l6 = l7 = l8 = np.float32(0.0)
    qw = qx = qy = qz = np.float32(0.0)
    for j in range(lbs.shape[1]):
        w = lbs[n, j]
        l0 += w * rot[b, j, 0, 0]
        l1 += w * rot[b, j, 0, 1]
        l2 += w * rot[b, j, 0, 2]
        l3 += w * rot[b, j, 1, 0]
        l4 += w * rot[b, j, 1, 1]
        l5 += w * rot[b, j, 1, 2]
        l6 += w * rot[b, j, 2, 0]
        l7 += w * rot[b, j, 2, 1]
        l8 += w * rot[b, j, 2, 2]
        qw += w * qj[b, j, 0]
        qx += w * qj[b, j, 1]
        qy += w * qj[b, j, 2]
        qz += w * qj[b, j, 3]
    return (l0, l1, l2, l3, l4, l5, l6, l7, l8), _normalized(qw, qx, qy, qz)


@njit(parallel=True, **JIT)
def pose_face_gaussians(verts, tri, bary, rot, lbs, qj, rq, slot, base, blend, sh_fixed, rotate_sh,
                        means, quats, log_scales, opacity, sh):
    """Stage 1's posed face Gaussians (see blendshapes.py for the maths), written into rows 0..N-1 of the outputs.

    verts [B,V,3] posed mesh; tri [N,3] vertex ids and bary [N,3] of each Gaussian's bound point;
    rot [B,J,3,3] joint rotations and qj [B,J,4] their quaternions (one hemisphere); lbs [N,J];
    rq [B,U,4] the deformation-transfer rotations of the bound triangles minus the identity
    (normalised here after adding it back) and slot [N] each Gaussian's triangle among them;
    base [N,C] and blend [B,N,C] (sum_k psi_k delta_k), C = 11 + 3 Cd channels: the offset from the
    surface point (3), quaternion (4), log-scale (3), opacity logit (1), the first Cd SH coefficients;
    sh_fixed [N,S,3] the unblended SH coefficients Cd..Cd+S-1; rotate_sh: turn band 1 with the pose.
    Outputs means [B,*,3], quats [B,*,4], log_scales [B,*,3], opacity [B,*], sh [B,*,Ksh,3].
    """
    k_sh = sh.shape[2]
    n_blend = min((base.shape[1] - 11) // 3, k_sh)
    for b in range(blend.shape[0]):
        for n in prange(blend.shape[1]):
            L, qpose = _blended_joints(rot, qj, lbs, b, n)
            g, d = base[n], blend[b, n]

            # mean = surface point on the posed mesh + L (offset from it)
            s = _bound_point(verts, b, tri[n], bary[n])
            ox, oy, oz = g[0] + d[0], g[1] + d[1], g[2] + d[2]
            for r in range(3):
                means[b, n, r] = s[r] + L[3 * r] * ox + L[3 * r + 1] * oy + L[3 * r + 2] * oz

            # rotation = q(pose) * r_f(psi) * (q0 + sum_k psi_k dq_k)
            u = slot[n]
            rf = _normalized(1 + rq[b, u, 0], rq[b, u, 1], rq[b, u, 2], rq[b, u, 3])
            q = _quat_multiply(qpose, _quat_multiply(rf, (g[3] + d[3], g[4] + d[4], g[5] + d[5], g[6] + d[6])))
            for c in range(4):
                quats[b, n, c] = q[c]
            for c in range(3):
                log_scales[b, n, c] = g[7 + c] + d[7 + c]
            opacity[b, n] = g[10] + d[10]

            out = sh[b, n]
            for k in range(k_sh):
                for c in range(3):
                    i = 11 + 3 * k + c
                    out[k, c] = g[i] + d[i] if k < n_blend else sh_fixed[n, k - n_blend, c]
            if rotate_sh:
                _rotate_band1(out, _quat_to_matrix(qpose))


@njit(parallel=True, **JIT)
def apply_emotion_offsets(offsets, quats, log_scales, opacity, sh):
    """Stage 2's offsets on one frame's face Gaussians, in place (as emotion.apply_offsets).

    offsets [N,11] (rotation 4, log-scale 3, colour 3, opacity 1); quats [*,4], log_scales [*,3],
    opacity [*], sh [*,K,3] of the frame, face Gaussians in rows 0..N-1: q * (1 + dr), log-scale + ds,
    SH DC + dc, opacity logit + da.
    """
    for n in prange(offsets.shape[0]):
        o = offsets[n]
        q = _quat_multiply((quats[n, 0], quats[n, 1], quats[n, 2], quats[n, 3]), (1 + o[0], o[1], o[2], o[3]))
        for c in range(4):
            quats[n, c] = q[c]
        for c in range(3):
            log_scales[n, c] += o[4 + c]
            sh[n, 0, c] += o[7 + c]
        opacity[n] += o[10]
