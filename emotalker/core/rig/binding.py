"""Gaussians bound to a triangle mesh: Poisson-disk surface sampling and barycentric binding.

A bound point keeps its triangle id and barycentric coordinates (its binding);
any per-vertex quantity (positions, LBS weights, expression offsets) reaches it
by barycentric interpolation, which is exact for points on the surface.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def triangle_areas(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """verts [V,3], faces [F,3] -> areas [F]."""
    v0, v1, v2 = (verts[faces[:, i]] for i in range(3))
    return 0.5 * np.linalg.norm(np.cross(v1 - v0, v2 - v0), axis=1)


def random_surface_points(verts: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator,
                          face_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """n area-uniform random points: (face_ids [n], bary [n,3]).

    face_weights [F] (0 excludes a face) multiplies each face's area.
    """
    w = triangle_areas(verts, faces).astype(np.float64)
    if face_weights is not None:
        w = w * face_weights
    if not (w > 0).any():
        raise ValueError("no triangle with positive area to sample on")
    face_ids = rng.choice(len(faces), size=n, p=w / w.sum())
    # Uniform barycentrics by reflecting the unit square onto the triangle.
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    bary = np.stack([1 - u - v, u, v], 1)
    return face_ids.astype(np.int64), bary


def _greedy_independent_set(n: int, pairs: np.ndarray) -> np.ndarray:
    """Indices 0..n-1 visited in order; keep each one that no kept index conflicts with.

    pairs [P,2] lists conflicting index pairs. Returns a boolean keep mask [n].
    """
    order = np.argsort(np.concatenate([pairs[:, 0], pairs[:, 1]]), kind="stable")
    nbr = np.concatenate([pairs[:, 1], pairs[:, 0]])[order]
    start = np.searchsorted(np.concatenate([pairs[:, 0], pairs[:, 1]])[order], np.arange(n + 1))
    blocked = np.zeros(n, dtype=bool)
    keep = np.zeros(n, dtype=bool)
    start_l, nbr_l = start.tolist(), nbr.tolist()
    for i in range(n):
        if blocked[i]:
            continue
        keep[i] = True
        for j in nbr_l[start_l[i]:start_l[i + 1]]:
            blocked[j] = True
    return keep


def poisson_disk_surface(verts: np.ndarray, faces: np.ndarray, n: int, seed: int = 0,
                         face_weights: np.ndarray | None = None, oversample: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Exactly n points on the mesh with a Poisson-disk (blue-noise) spacing.

    Dart throwing over `oversample * n` area-uniform candidates: a candidate is
    kept unless a kept one lies within radius r. r starts from the random
    sequential packing density (about 0.55 of the plane covered by disks of
    radius r/2) and shrinks until at least n points survive; the survivors are
    then thinned at random to n.

    verts [V,3], faces [F,3] -> (face_ids [n], bary [n,3]).
    """
    if n <= 0:
        return np.zeros(0, np.int64), np.zeros((0, 3))
    verts = np.asarray(verts, np.float64)
    rng = np.random.default_rng(seed)
    face_ids, bary = random_surface_points(verts, faces, oversample * n, rng, face_weights)
    points = np.einsum("nk,nkc->nc", bary, verts[faces[face_ids]])
    area = triangle_areas(verts, faces)
    if face_weights is not None:
        area = area * (face_weights > 0)
    r = np.sqrt(0.55 * area.sum() * 4 / (np.pi * n))
    tree = cKDTree(points)
    for _ in range(12):
        pairs = tree.query_pairs(r, output_type="ndarray")
        keep = _greedy_independent_set(len(points), pairs)
        if keep.sum() >= n:
            break
        r *= 0.85 * np.sqrt(keep.sum() / n)
    idx = np.flatnonzero(keep)
    if len(idx) >= n:
        idx = np.sort(rng.choice(idx, size=n, replace=False))
    else:  # pathological meshes: top up with plain random candidates
        rest = np.setdiff1d(np.arange(len(points)), idx)
        idx = np.sort(np.concatenate([idx, rng.choice(rest, size=n - len(idx), replace=False)]))
    return face_ids[idx], bary[idx]


def interpolate(values, faces, face_ids, bary):
    """Barycentric interpolation of per-vertex values (numpy or torch).

    values [V, *D], faces [F,3], face_ids [N], bary [N,3] -> [N, *D].
    For a batch of meshes use `interpolate_batched`.
    """
    tri = faces[face_ids]  # [N,3]
    v = values[tri]  # [N,3,*D]
    shape = (bary.shape[0], 3) + (1,) * (v.ndim - 2)
    return (v * bary.reshape(shape)).sum(1)


def interpolate_batched(values, faces, face_ids, bary):
    """values [B,V,*D] (torch) -> [B,N,*D]; same as `interpolate` per batch item.

    Under torch.inference_mode on the CPU, points [B,V,3] go through a compiled gather (one pass).
    """
    from emotalker.core.base import inference_kernels as kernels

    if values.ndim == 3 and values.shape[2] == 3 and kernels.applicable(values, bary):
        out = values.new_empty(values.shape[0], face_ids.shape[0], 3)
        kernels.run_parallel(kernels.interpolate_points, values.contiguous().numpy(),
                             faces[face_ids].contiguous().numpy(), bary.contiguous().numpy(), out.numpy())
        return out
    tri = faces[face_ids]  # [N,3]
    v = values[:, tri]  # [B,N,3,*D]
    shape = (1, bary.shape[0], 3) + (1,) * (v.ndim - 3)
    return (v * bary.reshape(shape)).sum(2)
