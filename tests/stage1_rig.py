"""A tiny FLAME-format rig for Stage 1 tests: a sphere 'head' with smooth expression
fields, a jaw whose skinning weights blend into the head, eyes, eyelids and posedirs."""

from __future__ import annotations

import numpy as np
import trimesh

from emotalker.core.rig.flame import FlameModel


def smooth_field(points: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A low-frequency random vector field [V,3] over points [V,3]."""
    freqs = rng.normal(size=(4, 3)) * 15.0
    phases = rng.uniform(0, 2 * np.pi, size=4)
    amps = rng.normal(size=(4, 3))
    return amplitude * np.sin(points @ freqs.T + phases) @ amps / 2.0


def tiny_rig(subdivisions: int = 2, n_expr: int = 8, seed: int = 0, regions: bool = True) -> FlameModel:
    rng = np.random.default_rng(seed)
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.1)
    v = np.asarray(mesh.vertices, np.float64)
    f = np.asarray(mesh.faces, np.int64)
    V, J = len(v), 5
    joints = np.array([[0, 0, 0], [0, -0.06, -0.01], [0, -0.02, 0.0], [0.03, 0.03, 0.08], [-0.03, 0.03, 0.08]])
    J_reg = np.zeros((J, V))
    for j, p in enumerate(joints):
        near = np.argsort(np.linalg.norm(v - p, axis=1))[:4]
        # Weights that reproduce the joint as well as 4 vertices can (least squares, then normalised).
        J_reg[j, near] = 0.25
    # Jaw: lower front of the sphere, blending smoothly into the head over ~3 cm.
    jaw = 1 / (1 + np.exp((v[:, 1] + 0.02) / 0.01)) * (v[:, 2] > -0.02)
    eye_l = np.exp(-np.sum((v - joints[3]) ** 2, 1) / 0.0004)
    eye_r = np.exp(-np.sum((v - joints[4]) ** 2, 1) / 0.0004)
    neck = np.clip(1 - jaw - eye_l - eye_r, 0, None)
    root = 0.1 * (v[:, 1] < -0.08)
    W = np.stack([root, neck, jaw, eye_l, eye_r], 1)
    W = W / W.sum(1, keepdims=True)
    shape = [smooth_field(v, rng, 0.004) for _ in range(2)]
    expr = [smooth_field(v, rng, 0.005) * (0.5 + 0.5 * (v[:, 2:3] > 0)) for _ in range(n_expr)]
    shapedirs = np.stack(shape + expr, 2)
    posedirs = np.stack([smooth_field(v, rng, 0.002) for _ in range(9 * (J - 1))], 2)
    eyelids = np.stack([smooth_field(v, rng, 0.003) * (eye_l + eye_r)[:, None] for _ in range(2)])
    kintree = np.array([[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]])
    reg = {}
    if regions:
        mouth = np.flatnonzero((np.abs(v[:, 1] + 0.02) < 0.02) & (v[:, 2] > 0.08))
        reg = {"lips": mouth}
    return FlameModel(v_template=v.astype(np.float32), faces=f, shapedirs=shapedirs.astype(np.float32), n_shape=2,
                      n_expr=n_expr, posedirs=posedirs.astype(np.float32), J_regressor=J_reg.astype(np.float32),
                      weights=W.astype(np.float32), kintree_table=kintree, eyelids=eyelids.astype(np.float32),
                      regions=reg, albedo=None, expr_names=[]).validate()
