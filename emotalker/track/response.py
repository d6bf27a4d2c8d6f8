"""How FaceMesh's landmarks move when the rig's expression moves, measured on renders of the rig.

FaceMesh pulls its landmarks towards a typical face. On the procedural head it reports a brow
raise at a quarter of the embedded points' motion, wide eyes at a quarter and a nose wrinkle
not at all. A fit that expects the mesh's own motion explains such a frame with a quarter of the
expression, and its prior shrinks even that. So the fit predicts what FaceMesh will report: per
embedded point and per coefficient (the expression components, then the eyelids) a rest-space
3-D motion, solved by least squares from the 2-D motions FaceMesh reports in a few views of the
rig's template with that coefficient set, and pulled towards the mesh's own motion where the
views leave it free (along each view's depth).
"""

from __future__ import annotations

import numpy as np

from emotalker.core.rig.flame import FlameModel

AMPLITUDE = 0.8  # each coefficient is measured from 0 to this: within both FLAME's and blendshape rigs' range
PULL = 1e-3  # weight of the mesh's own motion, relative to one view's mean squared projection derivative
MOVES = 1e-6  # metres: a coefficient that moves no embedded point further than this is not rendered
MIN_VIEWS = 2  # views that must find the face for a coefficient to be measured


def n_coefficients(model: FlameModel) -> int:
    """Expression components, then the two eyelids."""
    return model.n_expr + 2


def measure_response(model: FlameModel, emb, cameras, render, detector, bar=None) -> np.ndarray:
    """[L,3,E+2] float32: each embedded point's rest-space motion per unit of each coefficient, as
    FaceMesh reports it. cameras: (viewmat, K) per view; render(verts, viewmat, K) -> RGB image;
    detector: a LandmarkDetector; bar: updated once per view and coefficient (and per view for the
    rest pose), (1 + E + 2) * len(cameras) in all. A coefficient whose renders FaceMesh
    misses in all but one view keeps the mesh's own motion."""
    import torch

    from emotalker.track.embedding import posed_template

    def points(verts: np.ndarray) -> np.ndarray:
        return emb.points(torch.from_numpy(verts[None]))[0].numpy()

    def tick(n: int = 1) -> None:
        if bar is not None:
            bar.update(n)

    def detect(verts: np.ndarray, viewmat, K) -> np.ndarray | None:
        found, _ = detector.detect(render(verts, viewmat, K))
        tick()
        return None if found is None else found[emb.landmark].astype(np.float64)

    rest = posed_template(model)
    rest_points = points(rest)
    base = [detect(rest, viewmat, K) for viewmat, K in cameras]
    jacobians = [projection_jacobian(rest_points, viewmat, K) for viewmat, K in cameras]
    out = np.zeros((len(emb), 3, n_coefficients(model)))
    for c in range(n_coefficients(model)):
        coeffs = np.zeros(n_coefficients(model))
        coeffs[c] = AMPLITUDE
        moved = posed_template(model, expr=coeffs[: model.n_expr], eyelids=coeffs[model.n_expr:])
        mesh_motion = (points(moved) - rest_points) / AMPLITUDE
        out[..., c] = mesh_motion
        if np.abs(mesh_motion).max() * AMPLITUDE < MOVES:
            tick(len(cameras))
            continue
        H = np.zeros((len(emb), 3, 3))
        g = np.zeros((len(emb), 3))
        views = 0
        for (viewmat, K), J, before in zip(cameras, jacobians, base):
            if before is None:
                tick()
                continue
            after = detect(moved, viewmat, K)
            if after is None:
                continue
            reported = (after - before) / AMPLITUDE
            H += np.einsum("lai,laj->lij", J, J)
            g += np.einsum("lai,la->li", J, reported)
            views += 1
        if views < MIN_VIEWS:
            continue
        pull = PULL * np.trace(H, axis1=1, axis2=2).mean() / views
        out[..., c] = np.linalg.solve(H + pull * np.eye(3), (g + pull * mesh_motion)[..., None])[..., 0]
    return out.astype(np.float32)


def projection_jacobian(points: np.ndarray, viewmat: np.ndarray, K: np.ndarray) -> np.ndarray:
    """[L,2,3]: the pixel motion per metre of each point's motion (pinhole camera, model space)."""
    R = np.asarray(viewmat, np.float64)[:3, :3]
    cam = points @ R.T + np.asarray(viewmat, np.float64)[:3, 3]
    x, y, z = cam[:, 0], cam[:, 1], cam[:, 2]
    fx, fy = float(K[0][0]), float(K[1][1])
    J = np.zeros((len(points), 2, 3))
    J[:, 0, 0] = fx / z
    J[:, 0, 2] = -fx * x / z**2
    J[:, 1, 1] = fy / z
    J[:, 1, 2] = -fy * y / z**2
    return J @ R
