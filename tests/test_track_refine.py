"""`emotalker refine-tracking`: the pose search finds a known head motion, the landmark fit is kept and
every run starts from it (the same bytes twice), an interrupted run goes on, bad input is one error."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from emotalker.cli.main import main
from emotalker.core.datasets.dataset import Dataset, write_dataset_json
from emotalker.core.rig.flame import axis_angle_to_matrix
from emotalker.track import refine
from emotalker.track.fit import rotation_error_deg
from emotalker.track.refine import LANDMARK_FIT, RefineSettings, refine_clip
from stage1_data import teacher_model, write_teacher_dataset
from stage1_rig import tiny_rig


@pytest.fixture(scope="module")
def teacher_dataset(tmp_path_factory):
    return write_teacher_dataset(tmp_path_factory.mktemp("teacher"))


def moved(root, angle=(0.02, -0.03, 0.01), shift=(0.002, -0.003, 0.004)):
    """Every clip's viewmats wrong by one head motion M (a turn about the origin and a shift): viewmat @ M^-1."""
    M = np.eye(4)
    M[:3, :3] = axis_angle_to_matrix(torch.tensor([angle], dtype=torch.float64))[0].numpy()
    M[:3, 3] = shift
    ds = Dataset.open(root)
    for c in ds.clips:
        tr = ds.tracking(c.id)
        replace(tr, viewmat=(tr.viewmat.astype(np.float64) @ np.linalg.inv(M)).astype(np.float32)).save(
            ds.clip_dir(c.id) / "tracking.npz")
    return root


@pytest.fixture
def wrong_poses(teacher_dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(teacher_dataset, root)
    return moved(root)


def test_the_pose_search_finds_a_known_head_motion(teacher_dataset, wrong_poses):
    model = teacher_model(tiny_rig(subdivisions=3))  # the avatar that rendered the frames
    model.requires_grad_(False)
    truth, ds = Dataset.open(teacher_dataset), Dataset.open(wrong_poses)
    settings = RefineSettings(iterations=40, resolution=64)
    tracking, stats = refine_clip(model, ds, "clip00", settings)
    true, start = truth.tracking("clip00").viewmat, ds.tracking("clip00").viewmat
    before = rotation_error_deg(start[:, :3, :3], true[:, :3, :3])
    after = rotation_error_deg(tracking.viewmat[:, :3, :3], true[:, :3, :3])
    assert before.min() > 2.0 and after.mean() < 0.5, (before, after)
    shift_before = np.linalg.norm(start[:, :3, 3] - true[:, :3, 3], axis=1)
    shift_after = np.linalg.norm(tracking.viewmat[:, :3, 3] - true[:, :3, 3], axis=1)
    assert shift_after.mean() < 0.3 * shift_before.mean(), (shift_before, shift_after)
    assert stats["frames"] == 8 and stats["frames_kept"] == 0 and stats["psnr_after"] > stats["psnr_before"] + 5
    for name in ("expr", "jaw", "neck", "eyes", "eyelids", "blink", "K"):  # only the viewmats change
        np.testing.assert_array_equal(getattr(tracking, name), getattr(ds.tracking("clip00"), name))


def test_a_frame_the_search_makes_worse_keeps_its_pose(wrong_poses):
    model = teacher_model(tiny_rig(subdivisions=3))
    model.requires_grad_(False)
    ds = Dataset.open(wrong_poses)
    wild = RefineSettings(iterations=3, resolution=64, lr_rotation=1.0, lr_translation=1.0)  # steps that overshoot
    tracking, stats = refine_clip(model, ds, "clip00", wild)
    assert stats["frames_kept"] == 8 and stats["psnr_after"] == stats["psnr_before"]
    np.testing.assert_array_equal(tracking.viewmat, ds.tracking("clip00").viewmat)


def run(root, *extra):
    return main(["refine-tracking", str(root), "--steps", "30", "--iterations", "3", "--resolution", "32",
                 "--progress", "none", *extra])


def files(root, name):
    return {c.id: (root / "clips" / c.id / name).read_bytes() for c in Dataset.open(root).clips}


def test_the_landmark_fit_is_kept_and_a_rerun_starts_from_it(wrong_poses):
    landmark_fit = files(wrong_poses, "tracking.npz")
    assert run(wrong_poses) == 0
    assert files(wrong_poses, LANDMARK_FIT) == landmark_fit
    first = files(wrong_poses, "tracking.npz")
    assert all(first[c] != landmark_fit[c] for c in first)
    record = json.loads((wrong_poses / "refine.json").read_text())
    assert set(record["clips"]) == {"clip00", "clip01", "clip02"} and record["settings"]["iterations"] == 3
    assert not (wrong_poses / refine.WORK_DIR).exists()
    assert run(wrong_poses) == 0
    assert files(wrong_poses, "tracking.npz") == first


def test_an_interrupted_run_goes_on_where_it_stopped(wrong_poses, tmp_path, monkeypatch):
    other = tmp_path / "other"
    shutil.copytree(wrong_poses, other)
    assert run(other) == 0
    whole = files(other, "tracking.npz")

    real = refine.refine_clip
    calls = []

    def killed_after_one(model, ds, clip_id, *args, **kw):
        if calls:
            raise KeyboardInterrupt
        calls.append(clip_id)
        return real(model, ds, clip_id, *args, **kw)

    monkeypatch.setattr(refine, "refine_clip", killed_after_one)
    assert run(wrong_poses) == 130
    assert (wrong_poses / refine.WORK_DIR / "clips" / "clip00.json").is_file()

    def counted(model, ds, clip_id, *args, **kw):
        calls.append(clip_id)
        return real(model, ds, clip_id, *args, **kw)

    monkeypatch.setattr(refine, "refine_clip", counted)
    monkeypatch.setattr("emotalker.core.training.neutral.train_neutral",
                        lambda *a, **k: pytest.fail("the quick Stage 1 was trained again"))
    assert run(wrong_poses) == 0
    assert calls == ["clip00", "clip01", "clip02"]
    assert files(wrong_poses, "tracking.npz") == whole


def test_bad_input_is_one_error(wrong_poses, capsys):
    assert run(wrong_poses, "--iterations", "-1") == 2
    assert "iterations must be an integer in 0..1000" in capsys.readouterr().err
    ds = Dataset.open(wrong_poses)
    write_dataset_json(wrong_poses, ds.fps, ds.width, ds.height, [replace(c, split="test") for c in ds.clips])
    assert run(wrong_poses) == 2
    err = capsys.readouterr().err
    assert "dataset.json" in err and "no clips in the train split" in err
    assert not (wrong_poses / "clips" / "clip00" / LANDMARK_FIT).exists()
