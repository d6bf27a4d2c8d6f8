"""`emotalker demo`: the built-in sample and the bake it runs."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from bake_fixture import make_speech, make_tiny_avatar
from emotalker.bake.demo import DEMO_AVATAR, DEMO_SPEECH, demo_tracks, run_demo
from emotalker.bake.tracks import Tracks
from emotalker.core.base.emotions import EMOTIONS


def test_demo_tracks_cross_fade_from_happy_to_sad():
    frames = Tracks.from_dict(demo_tracks(125, 25.0)).evaluate(np.array([1, 31, 63, 94, 125]))
    happy, sad = frames.emotion[:, EMOTIONS.index("happy")], frames.emotion[:, EMOTIONS.index("sad")]
    np.testing.assert_allclose(happy, [1, 1, 0.5, 0, 0], atol=0.02)
    np.testing.assert_allclose(happy + sad, 1.0, atol=1e-9)
    np.testing.assert_allclose(frames.intensity, 2.0)


def test_demo_bakes_ply_mp4_and_contact_sheet(tmp_path):
    import imageio_ffmpeg
    from PIL import Image

    avatar = make_tiny_avatar(tmp_path / "avatar")
    speech = make_speech(tmp_path / "speech.wav", seconds=0.6)
    lines: list[str] = []
    outputs = run_demo(tmp_path / "out", resolution=32, progress="none", log=lines.append, avatar=avatar, speech=speech)
    sidecar = json.loads((tmp_path / "out" / "demo.json").read_text())
    assert (sidecar["frame_start"], sidecar["frame_end"]) == (1, 15)
    assert len(list((tmp_path / "out").glob("demo_*.ply"))) == 15
    sheet = np.asarray(Image.open(outputs["contact sheet"]))
    assert sheet.shape[0] > 2 * 32 and sheet.shape[1] > 4 * 32
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", outputs["mp4"]],
                           capture_output=True, text=True).stderr
    assert "Video:" in probe and "Audio:" in probe
    printed = "\n".join(lines)
    for path in outputs.values():
        assert path in printed


def test_shipped_demo_sample_is_small_and_complete():
    from emotalker.core.audio.waveform import load_audio
    from emotalker.core.models.bundle import AvatarBundle

    files = [p for p in DEMO_AVATAR.iterdir() if p.is_file()] + [DEMO_SPEECH]
    assert sum(p.stat().st_size for p in files) <= 25 * 1024 * 1024
    bundle = AvatarBundle.open(DEMO_AVATAR)
    assert bundle.has_stage("neutral") and bundle.has_stage("a2e")
    seconds = len(load_audio(DEMO_SPEECH)) / 16000
    assert 4.0 <= seconds <= 6.0


@pytest.mark.slow
def test_demo_command_on_the_shipped_sample(tmp_path, capsys):
    from emotalker.cli.main import main

    assert main(["demo", "--out", str(tmp_path / "demo"), "--progress", "none"]) == 0
    printed = capsys.readouterr().out
    for name in ("demo.mp4", "demo_contact_sheet.png", "demo.json"):
        assert str(tmp_path / "demo" / name) in printed
