"""`emotalker.track`'s landmarks and their embedding on a rig: the procedural head's lip landmarks land on
its lips, the eye contours on its eyelids, the irises on the right eyeballs; the cache; the files.

Everything but the missing-extra message needs mediapipe (the `track` extra) and skips without it.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from emotalker.core.base.errors import InputError
from emotalker.core.rig.flame import FlameModel, FlameParams, FlameRig
from emotalker.core.rig.mesh_preview import render_mesh
from emotalker.track import embedding as emb_mod
from emotalker.track.embedding import LandmarkEmbedding, cache_path, landmark_embedding, view_cameras
from emotalker.track.landmarks import (LANDMARK_GROUPS, N_LANDMARKS, LandmarkDetector, LandmarkTrack,
                                       detect_frames, import_mediapipe)

# Each landmark group and the procedural head's region it must sit on (max distance in metres).
GROUP_REGIONS = {
    "lips_outer": ("lips", 0.006),
    "lips_inner": ("lips", 0.003),
    "left_eye": ("eyelids", 0.003),
    "right_eye": ("eyelids", 0.003),
    "left_iris": ("eye_left", 0.002),
    "right_iris": ("eye_right", 0.002),
    "left_brow": ("brows", 0.006),
    "right_brow": ("brows", 0.006),
}


@pytest.fixture(scope="module")
def mediapipe():
    return pytest.importorskip("mediapipe")


@pytest.fixture(scope="module")
def rig(tmp_path_factory, mediapipe):
    """The default procedural head saved as a rig file, and its embedding (made once, cached beside it)."""
    from emotalker.core.head import make_head

    path = tmp_path_factory.mktemp("rig") / "flame_model.npz"
    make_head(0).save(path)
    model = FlameModel.load(path)
    return model, path, landmark_embedding(model, path)


def frontal_render(model: FlameModel) -> np.ndarray:
    viewmat, K = view_cameras(model)[0]
    img = render_mesh(model.v_template, model.faces, model.albedo, viewmat, K, 512, 512, background=(0.5, 0.5, 0.5))
    return (img * 255).round().astype(np.uint8)


def distance_to_region(model: FlameModel, points: np.ndarray, region: str) -> np.ndarray:
    verts = model.v_template[model.regions[region]]
    return np.linalg.norm(points[:, None] - verts[None], axis=2).min(1)


def test_groups_are_mediapipes_contours(mediapipe):
    c = mediapipe.solutions.face_mesh_connections
    ids = lambda edges: {i for e in edges for i in e}  # noqa: E731
    g = {k: set(v.tolist()) for k, v in LANDMARK_GROUPS.items()}
    assert g["lips_outer"] | g["lips_inner"] == ids(c.FACEMESH_LIPS) and not g["lips_outer"] & g["lips_inner"]
    assert g["left_eye"] == ids(c.FACEMESH_LEFT_EYE) and g["right_eye"] == ids(c.FACEMESH_RIGHT_EYE)
    assert g["left_iris"] == ids(c.FACEMESH_LEFT_IRIS) | {473} and g["right_iris"] == ids(c.FACEMESH_RIGHT_IRIS) | {468}
    assert g["left_brow"] == ids(c.FACEMESH_LEFT_EYEBROW) and g["right_brow"] == ids(c.FACEMESH_RIGHT_EYEBROW)
    assert g["nose"] == ids(c.FACEMESH_NOSE) and g["oval"] == ids(c.FACEMESH_FACE_OVAL)
    assert all(len(v) == len(set(v.tolist())) for v in LANDMARK_GROUPS.values())


def test_embedding_lands_on_the_right_regions(rig):
    model, _, emb = rig
    assert 350 <= len(emb) <= N_LANDMARKS and len(set(emb.landmark.tolist())) == len(emb)
    assert ((emb.weight > 0) & (emb.weight <= 1)).all() and np.allclose(emb.bary.sum(1), 1, atol=1e-5)
    assert (emb.bary >= -1e-6).all() and (emb.vertex_ids == model.faces[emb.face]).all()
    points = emb.points(torch.tensor(model.v_template)[None])[0].numpy()
    for group, (region, limit) in GROUP_REGIONS.items():
        rows = emb.index_of(LANDMARK_GROUPS[group])
        assert len(rows) >= 0.8 * len(LANDMARK_GROUPS[group]), f"{group}: {len(rows)} embedded"
        d = distance_to_region(model, points[rows], region)
        assert d.max() < limit, f"{group} lies up to {d.max() * 1000:.1f} mm from the {region} region"
    # the person's left is +x in FLAME space; the irises are not swapped
    left, right = (points[emb.index_of(LANDMARK_GROUPS[g])] for g in ("left_iris", "right_iris"))
    assert left[:, 0].min() > 0.02 and right[:, 0].max() < -0.02


def test_the_embedding_holds_facemeshs_response_to_the_expression(rig):
    """FaceMesh, on the rig's own renders, reports a raised inner brow at well under the mesh's motion and
    the lips' stretch close to it; the response survives the cache."""
    from emotalker.track.embedding import posed_template
    from emotalker.track.response import AMPLITUDE, projection_jacobian

    model, path, emb = rig
    assert emb.response is not None and emb.response.shape == (len(emb), 3, model.n_expr + 2)
    np.testing.assert_array_equal(LandmarkEmbedding.load(cache_path(path)).response, emb.response)
    rest = posed_template(model)
    points = lambda v: emb.points(torch.from_numpy(v[None]))[0].numpy()  # noqa: E731
    viewmat, K = view_cameras(model)[0]
    J = projection_jacobian(points(rest), viewmat, K)

    def frontal_gain(name: str) -> float:
        k = model.expr_index(name)
        own = np.einsum("lai,li->la", J, (points(posed_template(model, expr=np.eye(model.n_expr)[k] * AMPLITUDE))
                                          - points(rest)) / AMPLITUDE)
        reported = np.einsum("lai,li->la", J, emb.response[..., k])
        return float((reported * own).sum() / (own * own).sum())

    assert frontal_gain("brow_inner_raise") < 0.5  # measured: 0.30 (mediapipe 0.10.21)
    assert 0.6 < frontal_gain("lips_stretch_left") < 1.4


def test_a_rig_without_an_albedo_is_embedded_too(rig):
    """A converted FLAME model has no albedo: the grey render still gives lips, eyelids and eyeballs."""
    model, _, _ = rig
    grey = FlameModel(**{**vars(model), "albedo": None})
    emb = landmark_embedding(grey)
    assert len(emb) >= 350
    points = emb.points(torch.tensor(grey.v_template)[None])[0].numpy()
    for group in ("lips_outer", "left_eye", "right_eye", "left_iris", "right_iris"):
        region, limit = GROUP_REGIONS[group]
        rows = emb.index_of(LANDMARK_GROUPS[group])
        assert len(rows) >= 0.8 * len(LANDMARK_GROUPS[group]), f"{group}: {len(rows)} embedded"
        assert distance_to_region(grey, points[rows], region).max() < limit, group


def test_embedded_points_follow_the_jaw_and_carry_gradients(rig):
    model, _, emb = rig
    rig_t = FlameRig(model)
    jaw = torch.tensor([[0.25, 0.0, 0.0]], requires_grad=True)
    closed, _ = rig_t(FlameParams())
    opened, _ = rig_t(FlameParams(jaw=jaw))
    p0, p1 = emb.points(closed), emb.points(opened)
    drop = (p0 - p1)[0, :, 1].detach().numpy()  # how far each point went down
    upper = emb.index_of([0, 37, 267, 13])  # upper lip, outer and inner middle
    lower = emb.index_of([17, 84, 314, 14])
    assert len(upper) >= 3 and len(lower) >= 3
    assert drop[lower].min() > 0.005 and np.abs(drop[upper]).max() < 0.5 * drop[lower].min()
    p1[0, lower, 1].sum().backward()
    assert jaw.grad is not None and jaw.grad.abs().sum() > 0


def test_cache_is_reused_and_remade_when_the_rig_changes(rig, monkeypatch):
    model, path, emb = rig
    assert cache_path(path).is_file() and cache_path(path).name == "flame_model.landmarks.npz"
    made = []

    def fake_make(m, progress=None, source=None):
        made.append(m)
        return LandmarkEmbedding(emb.landmark[:3], emb.face[:3], emb.vertex_ids[:3], emb.bary[:3], emb.weight[:3])

    monkeypatch.setattr(emb_mod, "make_embedding", fake_make)
    again = landmark_embedding(model, path)
    assert made == [] and np.array_equal(again.landmark, emb.landmark) and np.array_equal(again.bary, emb.bary)
    moved = FlameModel(**{**vars(model), "v_template": model.v_template + np.float32(0.001)})
    assert len(landmark_embedding(moved, path)) == 3 and len(made) == 1  # a changed rig is embedded anew...
    assert len(landmark_embedding(moved, path)) == 3 and len(made) == 1  # ...and that is cached in turn
    recoloured = FlameModel(**{**vars(model), "albedo": model.albedo * np.float32(0.9)})
    landmark_embedding(recoloured, path)
    assert len(made) == 2
    cache_path(path).write_bytes(b"not an npz")  # a damaged cache is remade, not an error
    landmark_embedding(model, path)
    assert len(made) == 3


def test_a_rig_without_a_face_is_refused_in_one_line(tmp_path, mediapipe):
    from standin_rig import standin_model

    path = tmp_path / "egg.npz"
    with pytest.raises(InputError, match="FaceMesh found a face in 0 of") as info:
        landmark_embedding(standin_model(), path)
    assert str(path) in str(info.value) and not emb_mod.cache_path(path).exists()


def test_embedding_file_round_trip_and_bad_file(tmp_path, rig):
    _, _, emb = rig
    emb.save(tmp_path / "e.npz")
    back = LandmarkEmbedding.load(tmp_path / "e.npz")
    for name in ("landmark", "face", "vertex_ids", "bary", "weight"):
        assert np.array_equal(getattr(back, name), getattr(emb, name)), name
    assert back.key == emb.key and len(back.key) == 64
    np.savez(tmp_path / "bad.npz", landmark=np.zeros(3, np.int64))
    with pytest.raises(InputError, match="bad.npz"):
        LandmarkEmbedding.load(tmp_path / "bad.npz")


def test_landmark_track_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    track = LandmarkTrack(rng.uniform(0, 512, (4, N_LANDMARKS, 2)).astype(np.float32),
                          np.array([True, False, True, True]), np.array([1, 0, 2, 1], np.int32))
    track.save(tmp_path / "lm.npz")
    back = LandmarkTrack.load(tmp_path / "lm.npz")
    assert np.array_equal(back.points, track.points) and np.array_equal(back.found, track.found)
    assert np.array_equal(back.n_faces, track.n_faces) and back.n_faces.dtype == np.int32 and len(back) == 4
    np.savez(tmp_path / "short.npz", format=np.array("emotalker-landmarks/1"), points=np.zeros((4, 10, 2)),
             found=np.ones(4, bool), n_faces=np.ones(4, np.int32))
    with pytest.raises(InputError, match="short.npz"):
        LandmarkTrack.load(tmp_path / "short.npz")


def test_detect_on_a_render_and_on_no_face(rig, capfd):
    model, _, emb = rig
    img = frontal_render(model)
    capfd.readouterr()
    track = detect_frames([img, np.full_like(img, 128), img], static_images=True)
    assert capfd.readouterr().err == ""  # FaceMesh's start-up notices are held back
    assert track.points.shape == (3, N_LANDMARKS, 2) and track.points.dtype == np.float32
    assert track.found.tolist() == [True, False, True] and track.n_faces.tolist() == [1, 0, 1]
    assert (track.points[1] == 0).all()
    pts = track.points[0]
    assert ((pts > 0) & (pts < 512)).all()
    # the mouth is below the eyes, the person's left eye on the image's right
    lips, left, right = (pts[LANDMARK_GROUPS[g]].mean(0) for g in ("lips_outer", "left_iris", "right_iris"))
    assert lips[1] > left[1] + 50 and left[0] > right[0] + 50
    # the embedded points, projected with the render's camera, land on the detections (a pixel or two)
    viewmat, K = view_cameras(model)[0]
    cam = emb.points(torch.tensor(model.v_template)[None])[0].numpy() @ viewmat[:3, :3].T + viewmat[:3, 3]
    uv = cam[:, :2] / cam[:, 2:] * K[0, 0] + K[:2, 2]
    assert np.median(np.linalg.norm(uv - pts[emb.landmark], axis=1)) < 2.5


def test_detector_finds_no_face_in_a_blank_image(mediapipe):
    with LandmarkDetector(static_images=True) as det:
        points, n = det.detect(np.zeros((256, 256, 3), np.uint8))
    assert points is None and n == 0


def test_detects_a_real_photograph(mediapipe):
    data = pytest.importorskip("skimage.data")
    img = data.astronaut()
    with LandmarkDetector(static_images=True) as det:
        points, n = det.detect(img)
    assert n == 1 and points.shape == (N_LANDMARKS, 2)
    assert ((points >= 0) & (points <= np.array([img.shape[1], img.shape[0]]))).all()


def test_without_mediapipe_one_line_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe now raises ImportError
    with pytest.raises(InputError, match="track extra") as info:
        import_mediapipe()
    assert "install.py --extras track" in str(info.value) and "\n" not in str(info.value)
