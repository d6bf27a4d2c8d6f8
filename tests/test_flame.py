"""FLAME-format rig: file format, validation and LBS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emotalker.core.base.errors import InputError
from emotalker.core.rig.flame import FlameModel, FlameParams, FlameRig, axis_angle_to_matrix

from conftest import make_toy_rig


def test_zero_parameters_give_the_template_and_identity_transforms(toy_rig):
    verts, A = FlameRig(toy_rig)(FlameParams())
    assert torch.equal(verts[0], torch.as_tensor(toy_rig.v_template))
    assert torch.allclose(A, torch.eye(4).expand_as(A), atol=1e-7)


def test_jaw_rotation_moves_only_jaw_weighted_vertices():
    model = make_toy_rig(posedirs=False)
    rig = FlameRig(model)
    verts, _ = rig(FlameParams(jaw=torch.tensor([[0.4, 0.05, 0.0]])))
    moved = (verts[0] - torch.as_tensor(model.v_template)).norm(dim=1) > 1e-6
    jaw_weighted = torch.as_tensor(model.weights[:, 2] > 0)
    assert moved.any()
    assert torch.equal(moved, jaw_weighted)


def test_axis_angle_matches_known_rotation_and_is_orthonormal():
    R = axis_angle_to_matrix(torch.tensor([0.0, 0.0, np.pi / 2]))
    assert torch.allclose(R @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    aa = torch.randn(10, 3)
    Rs = axis_angle_to_matrix(aa)
    assert torch.allclose(Rs @ Rs.transpose(-1, -2), torch.eye(3).expand(10, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(Rs), torch.ones(10), atol=1e-5)


def test_expressions_are_linear_for_a_fixed_pose(toy_rig):
    rig = FlameRig(toy_rig)
    g = torch.Generator().manual_seed(1)
    e1, e2 = torch.randn(1, toy_rig.n_expr, generator=g), torch.randn(1, toy_rig.n_expr, generator=g)
    pose = dict(jaw=torch.tensor([[0.2, 0.0, 0.0]]), neck=torch.tensor([[0.0, 0.3, 0.1]]))
    f = lambda e: rig(FlameParams(expr=e, **pose))[0]  # noqa: E731
    f0 = f(torch.zeros_like(e1))
    combo = f(2.0 * e1 - 0.5 * e2)
    expected = f0 + 2.0 * (f(e1) - f0) - 0.5 * (f(e2) - f0)
    assert torch.allclose(combo, expected, atol=1e-6)


def test_a_batch_equals_its_items_one_by_one(toy_rig):
    rig = FlameRig(toy_rig)
    g = torch.Generator().manual_seed(2)
    B = 4
    params = FlameParams(
        shape=torch.randn(B, toy_rig.n_shape, generator=g),
        expr=torch.randn(B, toy_rig.n_expr, generator=g),
        global_pose=0.2 * torch.randn(B, 3, generator=g),
        neck=0.2 * torch.randn(B, 3, generator=g),
        jaw=0.2 * torch.randn(B, 3, generator=g),
        eyes=0.2 * torch.randn(B, 6, generator=g),
        eyelids=torch.rand(B, 2, generator=g),
        transl=0.01 * torch.randn(B, 3, generator=g),
    )
    verts, A = rig(params)
    for b in range(B):
        item = FlameParams(**{k: v[b : b + 1] for k, v in vars(params).items()})
        vb, Ab = rig(item)
        assert torch.allclose(verts[b], vb[0], atol=1e-6)
        assert torch.allclose(A[b], Ab[0], atol=1e-6)


def test_skinning_transforms_move_points_like_the_vertices(toy_rig):
    """A point bound to vertex v with v's weights moves exactly as v does (no correctives)."""
    model = make_toy_rig(posedirs=False)
    rig = FlameRig(model)
    params = FlameParams(jaw=torch.tensor([[0.3, 0.0, 0.0]]), neck=torch.tensor([[0.1, 0.2, 0.0]]))
    verts, A = rig(params)
    moved = FlameRig.skin(torch.as_tensor(model.v_template)[None], A, torch.as_tensor(model.weights))
    assert torch.allclose(moved, verts, atol=1e-6)


def test_npz_round_trip_is_exact(tmp_path, toy_rig):
    toy_rig.regions["lips"] = np.array([0, 1, 2])
    toy_rig.expr_names = [f"e{i}" for i in range(toy_rig.n_expr)]
    toy_rig.save(tmp_path / "rig.npz")
    back = FlameModel.load(tmp_path / "rig.npz")
    for name in ("v_template", "faces", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "eyelids"):
        assert np.array_equal(getattr(back, name), getattr(toy_rig, name)), name
    assert back.expr_names == toy_rig.expr_names and back.expr_index("e3") == 3
    assert np.array_equal(back.regions["lips"], [0, 1, 2])


def test_truncated_npz_is_one_clear_error(tmp_path, toy_rig):
    toy_rig.save(tmp_path / "rig.npz")
    data = (tmp_path / "rig.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.npz.*truncated"):
        FlameModel.load(tmp_path / "cut.npz")


def test_missing_keys_are_named(tmp_path):
    np.savez(tmp_path / "bad.npz", v_template=np.zeros((3, 3)))
    with pytest.raises(InputError, match="bad.npz.*missing keys f, shapedirs"):
        FlameModel.load(tmp_path / "bad.npz")


@pytest.mark.parametrize("key,bad,message", [
    ("weights", np.zeros((5, 5), np.float32), "weights must be"),
    ("posedirs", np.zeros((60, 3, 10), np.float32), "posedirs must be"),
    ("f", np.array([[0, 1, 999]]), "indexes vertices that do not exist"),
])
def test_wrong_shapes_are_named(tmp_path, toy_rig, key, bad, message):
    toy_rig.save(tmp_path / "rig.npz")
    with np.load(tmp_path / "rig.npz") as npz:
        data = dict(npz)
    data[key] = bad
    np.savez(tmp_path / "broken.npz", **data)
    with pytest.raises(InputError, match=f"broken.npz.*{message}"):
        FlameModel.load(tmp_path / "broken.npz")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(InputError, match="nope.npz: FLAME model file not found"):
        FlameModel.load(tmp_path / "nope.npz")
