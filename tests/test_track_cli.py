"""emotalker track: small videos of the procedural head (mesh_preview renders) become a dataset; bad videos
give one clear error; a re-run skips finished work and resumes unfinished work."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

pytest.importorskip("mediapipe")

from emotalker.bake.video import encode_mp4, write_png  # noqa: E402
from emotalker.cli.main import main as cli  # noqa: E402
from emotalker.core.datasets.dataset import Dataset  # noqa: E402
from emotalker.core.rig.flame import FlameModel, FlameParams, FlameRig  # noqa: E402

FPS, SECONDS, SIDE = 10, 1.5, 240


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """The procedural head, saved once (so its landmark embedding is cached beside it) and its path."""
    path = tmp_path_factory.mktemp("rig") / "head.npz"
    assert cli(["make-head", str(path)]) == 0
    return FlameModel.load(path), path


@pytest.fixture()
def quick_fit(monkeypatch):
    """Fewer optimiser steps: these tests check the command and its files; the fit's accuracy has its own tests."""
    import functools

    import emotalker.track.fit as fit

    monkeypatch.setattr(fit, "FitSettings", functools.partial(fit.FitSettings, rigid_steps=40, steps=80))


def head_frames(model: FlameModel, n: int, side: int = SIDE) -> list[np.ndarray]:
    """n uint8 RGB renders of the head talking (the jaw opening and closing), framed as make-sample frames it."""
    import torch

    from emotalker.core.rig.mesh_preview import render_mesh
    from emotalker.sample.generate import base_camera, framed_vertices

    K, view = base_camera(framed_vertices(model), side, 0.55)
    jaw = torch.zeros(n, 3)
    jaw[:, 0] = 0.15 * (1 - torch.cos(torch.linspace(0, 4 * np.pi, n)))
    with torch.no_grad():
        verts, _ = FlameRig(model)(FlameParams(jaw=jaw))
    return [(render_mesh(v, model.faces, model.albedo, view, K, side, side, background=(0.35, 0.4, 0.45)) * 255
             + 0.5).astype(np.uint8) for v in verts.numpy().astype(np.float64)]


def write_video(path, frames: list[np.ndarray], tmp, sound: bool = True, fps: float = FPS) -> str:
    """An MP4 of the frames (uint8 RGB), with a talking-like tone as its sound."""
    pngs = []
    for i, f in enumerate(frames):
        pngs.append(tmp / f"f{i:04d}.png")
        write_png(pngs[-1], f)
    audio = None
    if sound:
        t = np.arange(int(16000 * len(frames) / fps)) / 16000
        audio = tmp / "tone.wav"
        tone = 0.2 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))
        soundfile.write(str(audio), tone.astype(np.float32), 16000)
    encode_mp4(pngs, path, fps, audio=audio)
    return str(path)


def wide(frame: np.ndarray, width: int) -> np.ndarray:
    """The frame placed in a wider one (a crop has to find the face)."""
    out = np.empty((frame.shape[0], width, 3), np.uint8)
    out[:] = frame[0, 0]
    out[:, 20:20 + frame.shape[1]] = frame
    return out


def one_error(capsys, argv: list[str]) -> str:
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_a_file_that_is_not_a_video_is_one_error(tmp_path, capsys):
    bad = tmp_path / "take.mp4"
    bad.write_text("not a video")
    line = one_error(capsys, ["track", str(bad), "--out", str(tmp_path / "ds")])
    assert str(bad) in line and "not a readable video" in line
    assert not (tmp_path / "ds").exists()


def test_without_mediapipe_one_line_names_the_extra(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe now raises ImportError
    line = one_error(capsys, ["track", str(tmp_path / "v.mp4"), "--out", str(tmp_path / "ds")])
    assert "install.py --extras track" in line and not (tmp_path / "ds").exists()


def test_a_clip_id_that_would_leave_the_dataset_is_one_error(tmp_path, capsys):
    line = one_error(capsys, ["track", str(tmp_path / "v.mp4"), "--out", str(tmp_path / "ds"), "--clip-id", "../evil"])
    assert "clip id '../evil'" in line
    assert not (tmp_path / "ds").exists() and not (tmp_path / "evil").exists()


def test_too_short_and_silent_videos_are_one_error_each(tmp_path, capsys):
    grey = [np.full((64, 64, 3), 120, np.uint8)] * 5
    short = write_video(tmp_path / "short.mp4", grey, tmp_path)
    assert "less than the 1 s" in one_error(capsys, ["track", short, "--out", str(tmp_path / "ds")])
    mute = write_video(tmp_path / "mute.mp4", grey * 3, tmp_path, sound=False)
    assert "no sound track" in one_error(capsys, ["track", mute, "--out", str(tmp_path / "ds")])


def test_a_video_without_a_face_is_one_error(tmp_path, capsys):
    flat = write_video(tmp_path / "flat.mp4", [np.full((96, 96, 3), 90, np.uint8)] * int(FPS * SECONDS), tmp_path)
    line = one_error(capsys, ["track", flat, "--out", str(tmp_path / "ds"), "--fps", str(FPS), "--progress", "none"])
    assert flat in line and "no face found in any of its 15 frames" in line


def test_frames_without_a_face_are_named(tmp_path, capsys, head):
    frames = head_frames(head[0], int(FPS * SECONDS), 128)
    frames[:7] = [np.full_like(frames[0], 90)] * 7  # the person steps in late
    late = write_video(tmp_path / "late.mp4", frames, tmp_path)
    line = one_error(capsys, ["track", late, "--out", str(tmp_path / "ds"), "--fps", str(FPS), "--progress", "none"])
    assert "no face found in 7 of 15 frames (47 %, more than 20 %): frames 0-6" in line


def test_absurd_headers_are_refused_before_decoding(tmp_path):
    from dataclasses import replace

    from emotalker.core.base.errors import InputError
    from emotalker.track.video import _check_size, probe

    info = probe(write_video(tmp_path / "v.mp4", [np.full((64, 64, 3), 90, np.uint8)] * 15, tmp_path))
    assert (info.width, info.height, info.has_audio) == (64, 64, True) and abs(info.duration - 1.5) < 0.1
    with pytest.raises(InputError, match="sides must be 16..16384"):
        _check_size(replace(info, width=100_000))
    with pytest.raises(InputError, match="more than the limit"):
        _check_size(replace(info, duration=1e7))


def test_two_faces_are_one_error(tmp_path, capsys, head):
    frames = head_frames(head[0], int(FPS * SECONDS), 160)
    pair = write_video(tmp_path / "pair.mp4", [np.concatenate([f, f], 1) for f in frames], tmp_path)
    line = one_error(capsys, ["track", pair, "--out", str(tmp_path / "ds"), "--fps", str(FPS), "--progress", "none"])
    assert pair in line and "more than one face in 15 of 15 frames" in line


def test_a_video_of_the_head_tracks_into_a_dataset_and_a_rerun_skips_it(tmp_path, capsys, head, monkeypatch, quick_fit):
    model, rig = head
    frames = [wide(f, SIDE + 60) for f in head_frames(model, int(FPS * SECONDS))]
    video = write_video(tmp_path / "take 1.mp4", frames, tmp_path)
    out = tmp_path / "ds"
    argv = ["track", video, "--out", str(out), "--rig", str(rig), "--fps", str(FPS), "--resolution", "128",
            "--emotion", "happy", "--intensity", "2", "--progress", "none"]
    assert cli(argv) == 0
    ds = Dataset.open(out)
    ds.validate()
    assert [(c.id, c.emotion, c.intensity) for c in ds.clips] == [("take_1", "happy", 2.0)]
    assert (ds.width, ds.height, ds.fps, ds.n_frames("take_1")) == (128, 128, FPS, 15)
    assert ds.flame_model().n_shape == 0  # the fitted identity is applied
    alpha = ds.frame("take_1", 7)[..., 3]
    assert 0.15 < (alpha > 0.5).mean() < 0.8 and alpha[0, 0] < 0.1  # the head, not the background
    sf = soundfile.info(str(ds.audio_path("take_1")))
    assert (sf.samplerate, sf.channels) == (16000, 1) and abs(sf.duration - SECONDS) < 0.01
    assert (out / "clips" / "take_1" / "tracking_sheet.png").is_file()
    assert not list((out / "clips").glob(".*partial"))

    import emotalker.track.landmarks as landmarks

    monkeypatch.setattr(landmarks, "detect_frames", lambda *a, **k: pytest.fail("a finished clip was tracked again"))
    assert cli(argv + ["--split", "test"]) == 0
    assert "already tracked" in capsys.readouterr().out
    assert Dataset.open(out).clip("take_1").split == "test"  # labels follow the latest run


def test_an_interrupted_run_resumes_from_its_landmarks_and_fit(tmp_path, head, monkeypatch, quick_fit):
    import emotalker.track.fit as fit
    import emotalker.track.landmarks as landmarks
    import emotalker.track.pipeline as pipeline

    model, rig = head
    video = write_video(tmp_path / "take.mp4", head_frames(model, int(FPS * SECONDS), 128), tmp_path)
    argv = ["track", video, "--out", str(tmp_path / "ds"), "--rig", str(rig), "--fps", str(FPS), "--resolution", "128",
            "--progress", "none", "--no-sheet"]

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_write_frames", interrupted)
    assert cli(argv) == 130
    assert (tmp_path / "ds" / "clips" / ".take.partial" / "fit.npz").is_file()
    monkeypatch.undo()
    monkeypatch.setattr(landmarks, "detect_frames", lambda *a, **k: pytest.fail("landmarks were detected again"))
    monkeypatch.setattr(fit, "fit_clip", lambda *a, **k: pytest.fail("the clip was fitted again"))
    assert cli(argv) == 0
    Dataset.open(tmp_path / "ds").validate()
