"""The procedural head: format, determinism, closed skin, jaw and eyelid behaviour, local components."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from emotalker.cli.main import main
from emotalker.core.rig.flame import FlameModel, FlameParams, FlameRig
from emotalker.core.head import EXPRESSION_NAMES, GridConfig, make_head
from emotalker.core.rig.mesh_preview import look_at, rasterize

SMALL = GridConfig(rows=64, cols=84)
REQUIRED_REGIONS = ("lips", "lips_upper", "lips_lower", "mouth_interior", "eyes", "eyelids", "brows", "cheeks", "forehead", "nose", "neck")


@pytest.fixture(scope="module")
def head(tmp_path_factory) -> FlameModel:
    """The default head, written by the CLI and read back through FlameModel.load (which validates it)."""
    path = tmp_path_factory.mktemp("head") / "head.npz"
    assert main(["make-head", str(path), "--seed", "0"]) == 0
    return FlameModel.load(path)


def eyeball_ids(model):
    return np.concatenate([model.regions["eye_left"], model.regions["eye_right"]])


def skin_faces(model):
    eye = np.zeros(model.n_verts, bool)
    eye[eyeball_ids(model)] = True
    return model.faces[~eye[model.faces].any(1)]


def test_keys_and_shapes_are_consistent(head):
    V = head.n_verts
    assert V >= 3000
    assert head.n_shape >= 10 and head.n_expr == 50
    assert head.expr_names == list(EXPRESSION_NAMES)
    assert head.shapedirs.shape == (V, 3, head.n_shape + 50)
    assert head.posedirs.shape == (V, 3, 36)
    assert head.eyelids.shape == (2, V, 3)
    assert head.albedo.shape == (V, 3) and head.albedo.min() >= 0 and head.albedo.max() <= 1
    np.testing.assert_allclose(head.weights.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(head.J_regressor.sum(1), 1.0, atol=1e-5)
    for name in REQUIRED_REGIONS:
        assert len(head.regions[name]) > 0, name
    # Each posedirs block (neck, jaw, left eye, right eye) carries correctives.
    for block in range(4):
        assert np.abs(head.posedirs[:, :, 9 * block : 9 * block + 9]).max() > 1e-4


def test_same_seed_same_head_other_seed_other_head():
    a, b, c = make_head(3, SMALL), make_head(3, SMALL), make_head(4, SMALL)
    for key in ("v_template", "faces", "shapedirs", "posedirs", "weights", "J_regressor", "eyelids", "albedo"):
        assert np.array_equal(getattr(a, key), getattr(b, key)), key
    assert np.abs(a.v_template - c.v_template).max() > 1e-3
    assert np.abs(a.albedo - c.albedo).max() > 0.05


def test_zero_parameters_give_the_template(head):
    verts, _ = FlameRig(head)(FlameParams())
    assert torch.equal(verts[0], torch.as_tensor(head.v_template))


def test_outer_skin_is_watertight_and_eyeballs_are_closed(head):
    skin = trimesh.Trimesh(head.v_template, skin_faces(head), process=False)
    assert skin.is_watertight and skin.is_winding_consistent
    assert skin.volume > 0.002  # outward-facing, a head-sized volume (m^3)
    lo, hi = head.v_template.min(0), head.v_template.max(0)
    assert 0.13 < hi[0] - lo[0] < 0.2 and 0.22 < hi[1] - lo[1] < 0.32
    for name in ("eye_left", "eye_right"):
        ids = head.regions[name]
        remap = np.full(head.n_verts, -1)
        remap[ids] = np.arange(len(ids))
        faces = remap[head.faces[(remap[head.faces] >= 0).all(1)]]
        ball = trimesh.Trimesh(head.v_template[ids], faces, process=False)
        assert ball.is_watertight and ball.volume > 0


def test_jaw_opens_the_mouth_and_keeps_the_upper_lip(head):
    rig = FlameRig(head)
    verts, _ = rig(FlameParams(jaw=torch.tensor([[0.3, 0.0, 0.0]])))
    move = (verts[0] - torch.as_tensor(head.v_template)).norm(dim=1).numpy()
    assert move[head.regions["lips_upper"]].max() < 1e-6
    assert move[head.regions["nose"]].max() < 1e-6
    assert move[head.regions["lips_lower"]].mean() > 0.01
    assert move[head.regions["chin"]].mean() > 0.01
    # The chin goes down, not up.
    dy = (verts[0, :, 1] - torch.as_tensor(head.v_template[:, 1])).numpy()
    assert dy[head.regions["chin"]].mean() < -0.008


def test_expression_components_are_local_and_sized(head):
    V = head.n_verts
    expr = head.shapedirs[:, :, head.n_shape :]
    size = np.linalg.norm(expr, axis=1)  # [V, 50]
    for k, name in enumerate(head.expr_names):
        assert 0.002 < size[:, k].max() < 0.02, name
        assert size[eyeball_ids(head), k].max() == 0.0, name
    lips, brows = head.regions["lips"], head.regions["brows"]
    upper_face = (("brow_inner_raise", "brows"), ("brow_outer_raise", "brows"), ("brow_lower", "brows"),
                  ("brow_inner_raise_left", "brows"), ("forehead_wrinkle", "forehead"), ("eyes_squint", "eyelids"))
    for name, region in upper_face:
        k = head.expr_index(name)
        assert size[lips, k].max() < 1e-6 and size[head.regions[region], k].max() > 0.002, name
    for name in ("smile", "lips_pucker", "lips_press", "lower_lip_depress", "chin_raise"):
        k = head.expr_index(name)
        assert size[brows, k].max() < 1e-6 and size[lips, k].max() > 0.001, name
    # One-sided components stay on their side (+X is the subject's left).
    x = head.v_template[:, 0]
    for name, side in (("smile_left", 1), ("smile_right", -1), ("brow_lower_left", 1), ("squint_right", -1)):
        k = head.expr_index(name)
        assert size[side * x < -0.01, k].max() < 1e-6, name
    # Upper-lip components leave the lower lip alone and vice versa.
    assert size[head.regions["lips_lower"], head.expr_index("upper_lip_raise")].max() < 1e-6
    assert size[head.regions["lips_upper"], head.expr_index("lower_lip_depress")].max() < 1e-6
    assert V == size.shape[0]


def _eye_pixels(model, verts):
    """How many pixels of each eyeball a frontal camera sees. -> (left, right)"""
    viewmat = look_at((0.0, 0.03, 0.6), (0.0, 0.03, 0.0))
    K = np.array([[1600.0, 0, 160], [0, 1600.0, 120], [0, 0, 1]])
    fid, _ = rasterize(verts, model.faces, viewmat, K, 320, 240)
    counts = []
    for name in ("eye_left", "eye_right"):
        mask = np.zeros(model.n_verts, bool)
        mask[model.regions[name]] = True
        on_eye = mask[model.faces].all(1)
        counts.append(int(on_eye[fid[fid >= 0]].sum()))
    return counts


def test_eyelids_close_over_the_eyeballs(head):
    rig = FlameRig(head)
    open_l, open_r = _eye_pixels(head, rig(FlameParams())[0][0].numpy().astype(np.float64))
    assert open_l > 200 and open_r > 200
    shut_l, still_r = _eye_pixels(head, rig(FlameParams(eyelids=torch.tensor([[1.0, 0.0]])))[0][0].numpy().astype(np.float64))
    assert shut_l == 0 and still_r == open_r
    both = _eye_pixels(head, rig(FlameParams(eyelids=torch.tensor([[1.0, 1.0]])))[0][0].numpy().astype(np.float64))
    assert both == [0, 0]


def test_eye_joints_turn_the_eyeballs_only(head):
    rig = FlameRig(head)
    eyes = torch.tensor([[0.0, 0.3, 0.0, 0.0, 0.0, 0.0]])
    verts, _ = rig(FlameParams(eyes=eyes))
    move = (verts[0] - torch.as_tensor(head.v_template)).norm(dim=1).numpy()
    assert move[head.regions["eye_left"]].max() > 0.002
    assert move[head.regions["eye_right"]].max() < 1e-6
    centre = head.v_template[head.regions["eye_left"]].mean(0)
    np.testing.assert_allclose(head.J_regressor[3] @ head.v_template, centre, atol=1e-6)


def test_show_head_writes_a_contact_sheet(tmp_path, head):
    from PIL import Image

    head_path = tmp_path / "h.npz"
    head.save(head_path)
    out = tmp_path / "sheet.png"
    assert main(["show-head", str(out), "--head", str(head_path), "--size", "96"]) == 0
    img = np.asarray(Image.open(out))
    assert img.shape == (192, 288, 3)
    assert img.std() > 10  # something was drawn


def test_show_head_reports_a_missing_head(tmp_path, capsys):
    assert main(["show-head", str(tmp_path / "s.png"), "--head", str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz" in capsys.readouterr().err
    assert not (tmp_path / "s.png").exists()
