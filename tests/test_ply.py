"""PLY frames and sequences: INRIA layout, float32, round trips, up-axis, sidecar, plyfile and Blender import."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emotalker.core.render.gaussians import Gaussians
from emotalker.bake.axes import sh_basis, Z_UP_ROTATION
from emotalker.bake.ply import (ply_property_names, ply_sink, read_ply, write_ply, write_sidecar)
from emotalker.bake.sequence import run_sequence

INRIA_DEG3 = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
              + [f"f_rest_{i}" for i in range(45)]
              + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def _gaussians(n=64, degree=3, seed=0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return Gaussians(torch.randn(n, 3, generator=g) * 0.1, torch.randn(n, 4, generator=g),
                     torch.randn(n, 3, generator=g) - 4, torch.randn(n, generator=g), torch.randn(n, k, 3, generator=g))


def _quat_to_matrix(q):
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], -2)


def test_property_names_are_inria_order():
    assert ply_property_names(3) == INRIA_DEG3
    assert ply_property_names(0) == INRIA_DEG3[:9] + INRIA_DEG3[-8:]
    assert len(ply_property_names(1)) == 9 + 9 + 8


def test_frame_loads_with_plyfile_raw_float32_channel_major(tmp_path):
    plyfile = pytest.importorskip("plyfile")
    g = _gaussians()
    path = tmp_path / "f.ply"
    write_ply(path, g)
    vertex = plyfile.PlyData.read(str(path))["vertex"]
    data = vertex.data
    assert list(data.dtype.names) == INRIA_DEG3
    assert all(data.dtype[name] == np.dtype("<f4") for name in data.dtype.names)
    assert len(data) == len(g)
    np.testing.assert_array_equal(np.stack([data["x"], data["y"], data["z"]], 1), g.means.numpy())
    np.testing.assert_array_equal(data["nx"], 0)
    np.testing.assert_array_equal(data["opacity"], g.opacity_logits.numpy())
    np.testing.assert_array_equal(data["scale_2"], g.log_scales[:, 2].numpy())
    np.testing.assert_array_equal(data["rot_0"], g.quats[:, 0].numpy())  # w first
    sh = g.sh.numpy()
    np.testing.assert_array_equal(data["f_dc_1"], sh[:, 0, 1])
    # Channel-major rest: 15 coefficients of red, then 15 of green, then 15 of blue.
    np.testing.assert_array_equal(data["f_rest_0"], sh[:, 1, 0])
    np.testing.assert_array_equal(data["f_rest_14"], sh[:, 15, 0])
    np.testing.assert_array_equal(data["f_rest_15"], sh[:, 1, 1])
    np.testing.assert_array_equal(data["f_rest_44"], sh[:, 15, 2])


def test_round_trip_and_sh_truncation(tmp_path):
    g = _gaussians(degree=3)
    write_ply(tmp_path / "a.ply", g)
    raw = read_ply(tmp_path / "a.ply").raw()
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        np.testing.assert_array_equal(raw[name], getattr(g, name).numpy())
    write_ply(tmp_path / "b.ply", g, sh_degree=1)
    frame = read_ply(tmp_path / "b.ply")
    assert frame.sh_degree == 1 and frame.names == ply_property_names(1)
    np.testing.assert_array_equal(frame.raw()["sh"], g.sh[:, :4].numpy())
    # A degree-0 container asked for degree 2 gets zero bands.
    write_ply(tmp_path / "c.ply", _gaussians(degree=0), sh_degree=2)
    np.testing.assert_array_equal(read_ply(tmp_path / "c.ply").raw()["sh"][:, 1:], 0)


def test_z_up_rotates_positions_quaternions_and_sh(tmp_path):
    g = _gaussians(degree=3)
    write_ply(tmp_path / "z.ply", g, up_axis="z")
    frame = read_ply(tmp_path / "z.ply")
    means = g.means.numpy()
    # (x, y, z) -> (x, -z, y): FLAME's up (+Y) becomes +Z, the face's forward (+Z) becomes -Y.
    np.testing.assert_allclose(np.stack([frame.column("x"), frame.column("y"), frame.column("z")], 1),
                               np.stack([means[:, 0], -means[:, 2], means[:, 1]], 1), atol=1e-7)
    quats = np.stack([frame.column(f"rot_{i}") for i in range(4)], 1)
    np.testing.assert_allclose(_quat_to_matrix(quats.astype(np.float64)),
                               Z_UP_ROTATION @ _quat_to_matrix(g.quats.double().numpy()), atol=1e-5)
    # The colour seen along R d after equals the colour seen along d before.
    dirs = np.random.default_rng(0).normal(size=(5, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    sh_z = np.stack([frame.rows[:, 6:9]] + [frame.rows[:, 9:54].reshape(-1, 3, 15)[:, :, j] for j in range(15)], 1)
    before = np.einsum("mk,nkc->nmc", sh_basis(dirs, 3), g.sh.double().numpy())
    after = np.einsum("mk,nkc->nmc", sh_basis(dirs @ Z_UP_ROTATION.T, 3), sh_z.astype(np.float64))
    np.testing.assert_allclose(after, before, atol=1e-5)
    back = frame.raw(up_axis="z")
    np.testing.assert_allclose(back["means"], means, atol=1e-7)
    np.testing.assert_allclose(back["sh"], g.sh.numpy(), atol=1e-5)


def _bake_sequence(out, frames=range(1, 5), up_axis="y", sh_degree=3):
    def produce(frame):
        return _gaussians(n=50, seed=frame)

    run_sequence(frames, produce, [ply_sink(out, "head", sh_degree=sh_degree, up_axis=up_axis)], out_dir=out,
                 fingerprint={"test": 1}, progress="none")
    return write_sidecar(out, "head", fps=25, frame_start=frames[0], frame_end=frames[-1], count=50,
                         sh_degree=sh_degree, up_axis=up_axis, audio="line.wav")


def test_sequence_frames_and_sidecar(tmp_path):
    plyfile = pytest.importorskip("plyfile")
    sidecar = json.loads(_bake_sequence(tmp_path, sh_degree=1).read_text())
    assert sidecar == {"format": "emotalker-plyseq/1", "fps": 25, "frame_start": 1, "frame_end": 4, "count": 50,
                       "sh_degree": 1, "up_axis": "y", "units": "metres", "audio": "line.wav",
                       "frame_pattern": "head_{frame:06d}.ply", "properties": ply_property_names(1)}
    files = sorted(tmp_path.glob("head_*.ply"))
    assert [f.name for f in files] == [f"head_{i:06d}.ply" for i in range(1, 5)]
    for f in files:
        data = plyfile.PlyData.read(str(f))["vertex"].data
        assert list(data.dtype.names) == sidecar["properties"]
        assert {data.dtype[n] for n in data.dtype.names} == {np.dtype("<f4")}
        assert len(data) == sidecar["count"]
        assert sidecar["frame_pattern"].format(frame=int(f.stem.split("_")[1])) == f.name


def test_count_must_not_change_between_frames(tmp_path):
    sink = ply_sink(tmp_path, "head", sh_degree=0)
    with pytest.raises(ValueError, match="a frame has 40 Gaussians, the sequence 50"):
        run_sequence(range(1, 3), lambda f: _gaussians(n=50 if f == 1 else 40), [sink], out_dir=tmp_path,
                     fingerprint={}, progress="none")
    assert [p.name for p in tmp_path.glob("head_*.ply")] == ["head_000001.ply"]


@pytest.mark.blender
def test_frames_import_in_blender(tmp_path):
    bpy = pytest.importorskip("bpy")
    _bake_sequence(tmp_path, frames=range(1, 4), up_axis="z")
    for f in sorted(tmp_path.glob("head_*.ply")):
        frame = read_ply(f)
        before = set(bpy.data.objects)
        assert bpy.ops.wm.ply_import(filepath=str(f)) == {"FINISHED"}
        (obj,) = set(bpy.data.objects) - before
        mesh = obj.data
        assert len(mesh.vertices) == 50
        for name in ["opacity", "scale_0", "rot_0", "rot_3", "f_dc_0", "f_rest_8"]:
            attr = mesh.attributes[name]
            assert attr.domain == "POINT" and attr.data_type == "FLOAT"
            values = np.zeros(len(mesh.vertices), np.float32)
            attr.data.foreach_get("value", values)
            np.testing.assert_array_equal(values, frame.column(name))
        positions = np.zeros(3 * len(mesh.vertices), np.float32)
        mesh.vertices.foreach_get("co", positions)
        np.testing.assert_array_equal(positions.reshape(-1, 3), frame.rows[:, :3])
        bpy.data.objects.remove(obj)
        bpy.data.meshes.remove(mesh)
