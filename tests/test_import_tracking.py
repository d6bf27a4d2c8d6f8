"""import-tracking --format vhap: a VHAP / GaussianAvatars export written here, converted, re-projected."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from standin_rig import standin_model

from emotalker.cli.main import main as cli
from emotalker.core.datasets.dataset import Dataset
from emotalker.core.base.errors import InputError
from emotalker.core.rig.flame import FlameParams, FlameRig
from emotalker.core.datasets.importers.vhap import ImportOptions, import_vhap

T, W, H = 5, 40, 32


def look_at_gl(eye, target):
    """Camera-to-world in OpenGL axes (x right, y up, z backwards), as NeRF-style transforms hold it."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross((0, 1, 0), back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, back, eye
    return m


def write_vhap_export(root, model, rng, cameras=(0,), teeth=7):
    """A small export in VHAP's layout: transforms.json, flame_param/*.npz, images/, fg_masks/."""
    (root / "flame_param").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "fg_masks").mkdir()
    shape = rng.normal(0, 1, model.n_shape).astype(np.float32)
    static = rng.normal(0, 0.001, (1, model.n_verts + teeth, 3)).astype(np.float32)
    frames, params = [], []
    for t in range(T):
        p = {
            "rotation": rng.normal(0, 0.1, (1, 3)).astype(np.float32),
            "translation": rng.normal(0, 0.01, (1, 3)).astype(np.float32),
            "neck_pose": rng.normal(0, 0.05, (1, 3)).astype(np.float32),
            "jaw_pose": np.array([[0.1 * t, 0, 0]], np.float32),
            "eyes_pose": rng.normal(0, 0.05, (1, 6)).astype(np.float32),
            "expr": rng.normal(0, 0.5, (1, 20)).astype(np.float32),
            "shape": shape,
            "static_offset": static,
            "dynamic_offset": np.zeros((1, model.n_verts + teeth, 3), np.float32),
        }
        np.savez(root / "flame_param" / f"{t:05d}.npz", **p)
        params.append(p)
        for cam in cameras:
            name = f"{t:05d}_cam{cam}"
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "images" / f"{name}.jpg")
            Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8)).save(root / "fg_masks" / f"{name}.png")
            frames.append({
                "timestep_index": t, "timestep_id": f"frame_{t:05d}", "camera_index": cam, "camera_id": f"cam{cam}",
                "file_path": f"images/{name}.jpg", "fg_mask_path": f"fg_masks/{name}.png",
                "flame_param_path": f"flame_param/{t:05d}.npz",
                "transform_matrix": look_at_gl((0.1 * cam + 0.02 * t, 0.03, 0.6), (0, 0, 0)).tolist(),
                "fl_x": 60.0 + cam, "fl_y": 61.0, "cx": 19.5, "cy": 16.5, "w": W, "h": H,
            })
    (root / "transforms.json").write_text(json.dumps({"frames": frames}))
    return shape, static, params


@pytest.fixture()
def export(tmp_path):
    rng = np.random.default_rng(0)
    model = standin_model()
    model.save(tmp_path / "flame.npz")
    src = tmp_path / "subject_EXP-1"
    shape, static, params = write_vhap_export(src, model, rng)
    soundfile.write(str(tmp_path / "speech.wav"), rng.normal(0, 0.1, 44100 // 2).astype(np.float32), 44100)
    return tmp_path, src, model, shape, static, params


def project(verts, viewmat, K):
    cam = verts @ viewmat[:3, :3].T + viewmat[:3, 3]
    return cam[:, :2] / cam[:, 2:] * np.diag(K)[:2] + K[:2, 2]


def test_import_reprojects_exactly(export):
    tmp, src, model, shape, static, params = export
    rc = cli(["import-tracking", "--format", "vhap", str(src), str(tmp / "ds"), "--flame", str(tmp / "flame.npz"),
              "--audio", str(tmp / "speech.wav"), "--emotion", "happy", "--intensity", "2", "--split", "test"])
    assert rc == 0
    ds = Dataset.open(tmp / "ds")
    ds.validate()
    (clip,) = ds.clips
    assert (clip.id, clip.emotion, clip.intensity, clip.split) == ("subject_EXP-1", "happy", 2.0, "test")
    assert (ds.width, ds.height, ds.n_frames(clip.id)) == (W, H, T)
    info = soundfile.info(str(ds.audio_path(clip.id)))
    assert info.samplerate == 16000 and abs(info.duration - 0.5) < 0.01

    # The tracker's own pipeline: identity + global pose + translation, its camera.
    src_rig = FlameRig(model)
    meta = json.loads((src / "transforms.json").read_text())["frames"]
    cat = lambda k: torch.from_numpy(np.concatenate([p[k] for p in params]))  # noqa: E731
    shaped = FlameParams(shape=torch.from_numpy(np.repeat(shape[None], T, 0)), expr=cat("expr"), jaw=cat("jaw_pose"),
                         neck=cat("neck_pose"), eyes=cat("eyes_pose"), global_pose=cat("rotation"), transl=cat("translation"))
    # The static offset moves the template before LBS: emulate it by offsetting the template.
    model_off = type(model)(**{**model.__dict__, "v_template": model.v_template + static[0, : model.n_verts]})
    v_src, _ = FlameRig(model_off)(shaped)
    del src_rig
    # Ours: the dataset's rig (identity baked in), no global pose, the folded camera.
    tr = ds.tracking(clip.id)
    v_ds, _ = FlameRig(ds.flame_model())(FlameParams(expr=torch.from_numpy(tr.expr), jaw=torch.from_numpy(tr.jaw),
                                                     neck=torch.from_numpy(tr.neck), eyes=torch.from_numpy(tr.eyes)))
    assert ds.flame_model().n_shape == 0
    for t in range(T):
        c2w = np.array(meta[t]["transform_matrix"]) @ np.diag([1, -1, -1, 1])
        K = np.array([[meta[t]["fl_x"], 0, meta[t]["cx"]], [0, meta[t]["fl_y"], meta[t]["cy"]], [0, 0, 1]])
        want = project(v_src[t].double().numpy(), np.linalg.inv(c2w), K)
        got = project(v_ds[t].double().numpy(), tr.viewmat[t].astype(np.float64), tr.K[t].astype(np.float64))
        assert np.abs(want - got).max() < 2e-3  # pixels
    # Alpha is the tracker's foreground mask; colour is the image.
    mask = np.asarray(Image.open(src / "fg_masks" / "00002_cam0.png"), np.float32) / 255
    assert np.allclose(ds.frame(clip.id, 2)[..., 3], mask, atol=1e-6)


def test_second_clip_joins_and_identity_is_checked(export):
    tmp, src, model, *_ = export
    opts = ImportOptions(flame=tmp / "flame.npz", audio=tmp / "speech.wav", clip_id="a", emotion="sad")
    import_vhap(src, tmp / "ds", opts, log=lambda *a: None)
    import_vhap(src, tmp / "ds", ImportOptions(**{**opts.__dict__, "clip_id": "b", "split": "test"}), log=lambda *a: None)
    ds = Dataset.open(tmp / "ds")
    assert [c.id for c in ds.clips] == ["a", "b"] and ds.clip("b").split == "test"

    other = tmp / "other"
    write_vhap_export(other, model, np.random.default_rng(5))
    with pytest.raises(InputError, match="identity differs"):
        import_vhap(other, tmp / "ds", ImportOptions(**{**opts.__dict__, "clip_id": "c"}), log=lambda *a: None)
    assert [c.id for c in Dataset.open(tmp / "ds").clips] == ["a", "b"]  # nothing damaged


def test_multiview_export_takes_one_camera(tmp_path):
    model = standin_model()
    model.save(tmp_path / "flame.npz")
    src = tmp_path / "mv"
    write_vhap_export(src, model, np.random.default_rng(1), cameras=(0, 1))
    soundfile.write(str(tmp_path / "a.wav"), np.zeros(1600, np.float32), 16000)
    import_vhap(src, tmp_path / "ds", ImportOptions(flame=tmp_path / "flame.npz", audio=tmp_path / "a.wav", camera=1), log=lambda *a: None)
    tr = Dataset.open(tmp_path / "ds").tracking("mv")
    assert len(tr) == T and np.allclose(tr.K[:, 0, 0], 61.0)


def test_import_errors(export, capsys):
    tmp, src, model, *_ = export
    base = ImportOptions(flame=tmp / "flame.npz", audio=tmp / "speech.wav")
    quiet = dict(log=lambda *a: None)
    with pytest.raises(InputError, match="no transforms.json"):
        import_vhap(tmp, tmp / "ds", base, **quiet)
    with pytest.raises(InputError, match="pass the clip's audio"):
        import_vhap(src, tmp / "ds", ImportOptions(flame=tmp / "flame.npz"), **quiet)
    with pytest.raises(InputError, match="unknown emotion 'joy'"):
        import_vhap(src, tmp / "ds", ImportOptions(flame=tmp / "flame.npz", emotion="joy"), **quiet)
    (src / "flame_param" / "00003.npz").unlink()
    with pytest.raises(InputError, match="FLAME parameter file not found") as err:
        import_vhap(src, tmp / "ds", base, **quiet)
    assert err.value.path.endswith("00003.npz")
    np.savez(src / "flame_param" / "00003.npz", expr=np.zeros((1, 80), np.float32), jaw_pose=np.zeros((1, 3), np.float32),
             rotation=np.zeros((1, 3), np.float32), translation=np.zeros((1, 3), np.float32))
    with pytest.raises(InputError, match="expr has 80 values, the first frame 20"):
        import_vhap(src, tmp / "ds", base, **quiet)
    np.savez(src / "flame_param" / "00000.npz", expr=np.zeros((1, 80), np.float32), jaw_pose=np.zeros((1, 3), np.float32),
             rotation=np.zeros((1, 3), np.float32), translation=np.zeros((1, 3), np.float32))
    with pytest.raises(InputError, match="expr has 80 coefficients but"):
        import_vhap(src, tmp / "ds", base, **quiet)
    assert not (tmp / "ds" / "dataset.json").exists()
    # The CLI prints it as one line and exits 2.
    rc = cli(["import-tracking", "--format", "vhap", str(src), str(tmp / "ds"), "--flame", str(tmp / "flame.npz")])
    assert rc == 2 and capsys.readouterr().err.count("\n") == 1
