"""`emotalker.track.response`: FaceMesh's response to the rig's expression, solved from what a detector
reports in a few views (a stand-in detector on any machine; FaceMesh itself with the `track` extra)."""

from __future__ import annotations

import numpy as np
import torch

from emotalker.core.head import GridConfig, make_head
from emotalker.core.rig.flame import FlameModel
from emotalker.track.embedding import LandmarkEmbedding, posed_template, view_cameras
from emotalker.track.landmarks import N_LANDMARKS
from emotalker.track.response import AMPLITUDE, measure_response, projection_jacobian


def project(points: np.ndarray, viewmat: np.ndarray, K: np.ndarray) -> np.ndarray:
    cam = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    uv = cam @ K.T
    return uv[:, :2] / uv[:, 2:]


def face_embedding(model: FlameModel, n: int = 60) -> LandmarkEmbedding:
    """n points on the face's triangles, as mediapipe landmarks 0..n-1."""
    rng = np.random.default_rng(0)
    on_face = np.zeros(model.n_verts, bool)
    for name in ("lips", "brows", "eyelids", "cheeks"):
        on_face[model.regions[name]] = True
    face = rng.choice(np.nonzero(on_face[model.faces].all(1))[0], n, replace=False)
    bary = rng.dirichlet([2, 2, 2], n).astype(np.float32)
    return LandmarkEmbedding(np.arange(n), face, model.faces[face], bary, np.ones(n, np.float32))


class ScaledDetector:
    """Reports the embedded points' projection, their motion from the rest pose scaled by `gain`
    per point (render() hands it the vertices and camera); finds no face when `blind(verts)`."""

    def __init__(self, emb: LandmarkEmbedding, rest: np.ndarray, gain: np.ndarray, blind=lambda v: False):
        self.emb, self.rest, self.gain, self.blind = emb, rest, gain, blind

    def detect(self, scene):
        verts, viewmat, K = scene
        if self.blind(verts):
            return None, 0
        points = lambda v: self.emb.points(torch.from_numpy(v[None]))[0].numpy()  # noqa: E731
        at_rest = project(points(self.rest), viewmat, K)
        out = np.zeros((N_LANDMARKS, 2))
        out[self.emb.landmark] = at_rest + self.gain[:, None] * (project(points(verts), viewmat, K) - at_rest)
        return out, 1


def test_projection_jacobian_is_the_derivative_of_the_projection():
    rng = np.random.default_rng(1)
    points = rng.normal(0, 0.05, (5, 3))
    model = make_head(0, GridConfig(rows=24, cols=32))
    viewmat, K = view_cameras(model)[5]
    J = projection_jacobian(points, viewmat, K)
    for axis in range(3):
        step = np.zeros(3)
        step[axis] = 1e-6
        numeric = (project(points + step, viewmat, K) - project(points - step, viewmat, K)) / 2e-6
        np.testing.assert_allclose(J[:, :, axis], numeric, rtol=1e-4, atol=1e-3)


def test_the_response_is_what_the_detector_reports_and_the_mesh_where_it_sees_nothing():
    model = make_head(0, GridConfig(rows=48, cols=64))
    emb = face_embedding(model)
    rest = posed_template(model)
    gain = np.linspace(0.2, 1.0, len(emb))  # each point under-reported by its own factor
    smile = model.expr_index("smile")
    unseen = model.expr_index("brow_inner_raise")
    # the detector loses the face whenever the inner brows are raised: that coefficient keeps the mesh's motion
    brows_up = posed_template(model, expr=np.eye(model.n_expr)[unseen] * AMPLITUDE)
    detector = ScaledDetector(emb, rest, gain, blind=lambda v: np.array_equal(v, brows_up))
    cameras = view_cameras(model)[:5]
    calls = []

    class Bar:
        def update(self, n):
            calls.append(n)

    response = measure_response(model, emb, cameras, lambda v, viewmat, K: (v, viewmat, K), detector, Bar())
    assert response.shape == (len(emb), 3, model.n_expr + 2) and response.dtype == np.float32
    assert sum(calls) == len(cameras) * (1 + model.n_expr + 2)

    def own(coefficient: int) -> np.ndarray:
        coeffs = np.eye(model.n_expr + 2)[coefficient] * AMPLITUDE
        moved = posed_template(model, expr=coeffs[:model.n_expr], eyelids=coeffs[model.n_expr:])
        points = lambda v: emb.points(torch.from_numpy(v[None]))[0].numpy()  # noqa: E731
        return (points(moved) - points(rest)) / AMPLITUDE

    # Seen from the front, the response moves each point as the detector reported it (scaled by its gain)
    viewmat, K = cameras[0]
    J = projection_jacobian(emb.points(torch.from_numpy(rest[None]))[0].numpy(), viewmat, K)
    reported = np.einsum("lai,li->la", J, response[..., smile])
    want = gain[:, None] * np.einsum("lai,li->la", J, own(smile))
    assert np.abs(want).max() > 1.0  # pixels a unit of smile moves the points
    np.testing.assert_allclose(reported, want, atol=0.05 * np.abs(want).max())
    np.testing.assert_allclose(response[..., unseen], own(unseen), atol=1e-6)
    lid = model.n_expr  # the left eyelid: measured too
    assert np.abs(response[..., lid] - own(lid)).max() > 0.1 * np.abs(own(lid)).max()
