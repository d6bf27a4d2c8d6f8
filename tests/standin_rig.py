"""A small FLAME-format stand-in head for tests: an ellipsoid with a hinged jaw, eyes and named expressions.

Shapes are crude but every part of the format is real: 5 joints, skinning
weights, 50 named expression components, 2 eyelid blendshapes, an albedo.
"""

from __future__ import annotations

import numpy as np

from emotalker.core.rig.flame import FlameModel
from emotalker.core.head.components import EXPRESSION_NAMES

EXPR_NAMES = list(EXPRESSION_NAMES)  # the procedural head's names, so lookups by name match


def standin_model(n_lat: int = 24, n_lon: int = 32, seed: int = 0) -> FlameModel:
    """An ellipsoid head (~ 16 x 22 x 19 cm) centred near the origin, face towards +Z."""
    rng = np.random.default_rng(seed)
    lat = np.linspace(0.0, np.pi, n_lat)
    lon = np.linspace(0.0, 2 * np.pi, n_lon, endpoint=False)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    verts = np.stack([0.08 * np.sin(la) * np.sin(lo), 0.11 * np.cos(la), 0.095 * np.sin(la) * np.cos(lo)], -1).reshape(-1, 3)
    faces = []
    for i in range(n_lat - 1):
        for j in range(n_lon):
            a, b = i * n_lon + j, i * n_lon + (j + 1) % n_lon
            c, d = a + n_lon, b + n_lon
            faces += [[a, c, b], [b, c, d]]
    faces = np.array(faces, np.int64)
    V = len(verts)
    joints = np.array([[0, 0, 0], [0, -0.09, -0.01], [0, -0.03, 0.0], [0.03, 0.03, 0.07], [-0.03, 0.03, 0.07]], np.float32)
    # J_regressor: each joint is the mean of its nearest vertices (so joints follow identity shape).
    J_regressor = np.zeros((5, V), np.float32)
    for j, p in enumerate(joints):
        near = np.argsort(np.linalg.norm(verts - p, axis=1))[:4]
        J_regressor[j, near] = 0.25
    weights = np.zeros((V, 5), np.float32)
    lower_front = (verts[:, 1] < -0.03) & (verts[:, 2] > 0.02)
    weights[lower_front, 2] = 1.0
    weights[~lower_front, 1] = 1.0
    E = len(EXPR_NAMES)
    shapedirs = np.zeros((V, 3, 2 + E), np.float32)
    shapedirs[:, :, :2] = rng.normal(0, 0.002, (V, 3, 2))
    front = np.clip(verts[:, 2] / 0.095, 0, 1)
    for e in range(E):
        centre = verts[rng.integers(V)]
        w = np.exp(-np.sum((verts - centre) ** 2, 1) / 0.03**2) * front
        shapedirs[:, :, 2 + e] = w[:, None] * rng.normal(0, 0.004, 3)[None]
    eyelids = np.zeros((2, V, 3), np.float32)
    for k in range(2):
        w = np.exp(-np.sum((verts - joints[3 + k]) ** 2, 1) / 0.015**2)
        eyelids[k, :, 1] = -0.006 * w
    albedo = np.clip(np.array([0.8, 0.6, 0.5]) + rng.normal(0, 0.02, (V, 3)), 0, 1).astype(np.float32)
    return FlameModel(
        v_template=verts.astype(np.float32), faces=faces, shapedirs=shapedirs, n_shape=2, n_expr=E,
        posedirs=np.zeros((V, 3, 36), np.float32), J_regressor=J_regressor, weights=weights,
        kintree_table=np.array([[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64), eyelids=eyelids,
        regions={"lips": np.nonzero(lower_front)[0]}, albedo=albedo, expr_names=list(EXPR_NAMES),
    ).validate()


def write_tiny_dataset(root, n_clips: int = 2, T: int = 4, size: int = 16, seed: int = 0):
    """A complete small dataset (no rendering: random RGBA frames) with the stand-in rig."""
    from pathlib import Path

    import soundfile
    from PIL import Image

    from emotalker.core.datasets.dataset import ClipInfo, Tracking, write_dataset_json

    root = Path(root)
    rng = np.random.default_rng(seed)
    model = standin_model()
    root.mkdir(parents=True, exist_ok=True)
    model.save(root / "flame_model.npz")
    emotions = ["happy", "sad", "angry", "neutral"]
    clips = []
    for i in range(n_clips):
        cid = f"clip{i}"
        d = root / "clips" / cid / "images"
        d.mkdir(parents=True)
        for t in range(T):
            Image.fromarray(rng.integers(0, 256, (size, size, 4), dtype=np.uint8), "RGBA").save(d / f"{t:06d}.png")
        soundfile.write(str(root / "clips" / cid / "audio.wav"), np.zeros(1600, np.float32), 16000)
        K = np.array([[20, 0, size / 2], [0, 20, size / 2], [0, 0, 1]], np.float32)
        tr = Tracking(expr=rng.normal(0, 0.1, (T, model.n_expr)).astype(np.float32), jaw=np.zeros((T, 3), np.float32),
                      neck=np.zeros((T, 3), np.float32), eyes=np.zeros((T, 6), np.float32),
                      eyelids=np.zeros((T, 2), np.float32), blink=np.zeros(T, np.float32),
                      K=np.repeat(K[None], T, 0), viewmat=np.repeat(np.eye(4, dtype=np.float32)[None], T, 0))
        tr.save(root / "clips" / cid / "tracking.npz")
        clips.append(ClipInfo(cid, emotions[i % 4], 2.0, "train" if i else "test"))
    write_dataset_json(root, 25.0, size, size, clips)
    return root
