"""Soft skin-region masks on a FLAME-format head, found from its geometry.

The emotion-driven skin effects (wrinkles, flush) need to know where the
forehead, the glabella, the nose bridge and the cheeks are. Any FLAME-like
head has eye joints, so the masks are placed relative to the eyes (their
height, the face's midline, and the distance between them as the unit of
length), and limited to surfaces facing forward. This works for the
procedural head and for a real FLAME model alike.
"""

from __future__ import annotations

import numpy as np

MASK_NAMES = ("forehead", "furrow", "nose", "cheeks", "face")


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals. verts [V,3], faces [F,3] -> [V,3]."""
    v = verts[faces]
    n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    out = np.zeros_like(verts)
    for k in range(3):
        np.add.at(out, faces[:, k], n)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def _band(x: np.ndarray, lo: float, hi: float, soft: float) -> np.ndarray:
    """1 inside [lo, hi], easing to 0 over `soft` outside (smoothstep)."""
    a = np.clip((x - (lo - soft)) / soft, 0, 1)
    b = np.clip(((hi + soft) - x) / soft, 0, 1)
    s = lambda u: u * u * (3 - 2 * u)  # noqa: E731
    return s(a) * s(b)


def skin_masks(verts: np.ndarray, faces: np.ndarray, eye_left: np.ndarray, eye_right: np.ndarray) -> dict[str, np.ndarray]:
    """Masks in 0..1 per vertex [V] for each of MASK_NAMES.

    verts [V,3] rest pose (FLAME axes: +Y up, +Z out of the face); eye_left, eye_right [3] eye joints.
    """
    u = float(np.linalg.norm(eye_left - eye_right))  # the interocular distance, ~6 cm on an adult
    mid = 0.5 * (eye_left + eye_right)
    x = (verts[:, 0] - mid[0]) / u
    y = (verts[:, 1] - mid[1]) / u
    front = np.clip((vertex_normals(verts, faces)[:, 2] - 0.2) / 0.4, 0, 1)
    ahead = np.clip((verts[:, 2] - (mid[2] - 0.6 * u)) / (0.3 * u), 0, 1)  # in front of the ears
    face = front * ahead
    masks = {
        "forehead": _band(y, 0.55, 1.45, 0.25) * _band(np.abs(x), 0.0, 0.75, 0.25) * face,
        "furrow": _band(y, 0.05, 0.6, 0.12) * _band(np.abs(x), 0.0, 0.08, 0.07) * face,
        "nose": _band(y, -0.45, 0.05, 0.1) * _band(np.abs(x), 0.0, 0.14, 0.06) * face,
        "cheeks": _band(y, -1.05, -0.35, 0.25) * _band(np.abs(x), 0.35, 0.85, 0.2) * face,
        "face": _band(y, -2.2, 1.6, 0.4) * face,
    }
    return {k: v.astype(np.float32) for k, v in masks.items()}


FLUSH_RGB = np.array([0.62, 0.09, 0.08], np.float32)
PALE_RGB = np.array([0.62, 0.60, 0.55], np.float32)


def skin_colour(albedo: np.ndarray, masks: dict[str, np.ndarray], flush: float, pallor: float) -> np.ndarray:
    """Per-vertex colour [V,3] of `albedo` [V,3] with blood brought to the cheeks and face
    (flush, 0..1) or drained from the face (pallor, 0..1). Not a linear function of the
    blendshape weights: this is the colour change Stage 2 must learn."""
    f = (flush * (0.55 * masks["cheeks"] + 0.2 * masks["face"]))[:, None]
    c = albedo * (1 - f) + FLUSH_RGB * f
    p = (pallor * 0.45 * masks["face"])[:, None]
    return (c * (1 - p) + PALE_RGB * p).astype(np.float32)


def wrinkle_weights(masks: dict[str, np.ndarray], forehead: float, furrow: float, nose: float) -> np.ndarray:
    """Per-vertex depth of each wrinkle family [V,3]: forehead lines, brow furrow, nose-bridge lines."""
    return np.stack([forehead * masks["forehead"], furrow * masks["furrow"], nose * masks["nose"]], 1).astype(np.float32)
