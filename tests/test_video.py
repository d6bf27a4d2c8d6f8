"""Image exports: straight-alpha PNGs, MP4 with audio through imageio-ffmpeg, contact sheets."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import soundfile

from emotalker.core.base.errors import InputError
from emotalker.bake.video import contact_sheet, encode_mp4, to_rgba8, write_png


def test_rgba8_unpremultiplies():
    rgb = np.array([[[0.25, 0.5, 0.0], [0.0, 0.0, 0.0]]], np.float32)  # premultiplied by alpha 0.5 and 0
    alpha = np.array([[[0.5], [0.0]]], np.float32)
    out = to_rgba8(rgb, alpha)
    np.testing.assert_array_equal(out, [[[128, 255, 0, 128], [0, 0, 0, 0]]])


def test_png_round_trip(tmp_path):
    from PIL import Image

    image = np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    write_png(tmp_path / "a.png", image)
    back = Image.open(tmp_path / "a.png")
    assert back.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(back), image)


def test_mp4_with_audio_and_odd_size(tmp_path):
    import imageio_ffmpeg

    fps, n, h, w = 25, 10, 31, 41
    frames = []
    for i in range(n):
        image = np.zeros((h, w, 4), np.uint8)
        image[:, : w // 2] = (255, 0, 0, 255)  # opaque red left half; the right half is transparent
        frames.append(tmp_path / f"f_{i:06d}.png")
        write_png(frames[-1], image)
    audio = tmp_path / "a.wav"
    t = np.arange(16000) / 16000
    soundfile.write(audio, 0.3 * np.sin(2 * np.pi * 440 * t), 16000)
    out = tmp_path / "clip.mp4"
    encoder = encode_mp4(frames, out, fps, audio=audio, audio_start=0.1, background=(0.0, 0.0, 1.0))
    assert encoder in ("libx264", "libopenh264", "mpeg4")
    info = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(out)],
                          capture_output=True, text=True).stderr
    assert "Video: h264" in info or encoder == "mpeg4"
    assert "yuv420p" in info and "Audio: aac" in info
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    assert meta["size"] == (42, 32)  # padded to even
    decoded = [np.frombuffer(f, np.uint8).reshape(32, 42, 3) for f in reader]
    assert len(decoded) == n
    left, right = decoded[0][10:20, 5:15].mean((0, 1)), decoded[0][10:20, 28:38].mean((0, 1))
    assert left[0] > 200 and left[2] < 60  # red
    assert right[2] > 200 and right[0] < 60  # background blue where alpha was 0
    assert not list(tmp_path.glob(".*.part"))


def test_mp4_refuses_missing_audio(tmp_path):
    write_png(tmp_path / "f.png", np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(InputError, match="audio file not found"):
        encode_mp4([tmp_path / "f.png"], tmp_path / "x.mp4", 25, audio=tmp_path / "none.wav")
    assert not (tmp_path / "x.mp4").exists()


def test_contact_sheet_tiles_with_labels():
    images = [np.full((20, 30, 3), 40 * i, np.uint8) for i in range(5)]
    sheet = contact_sheet(images, labels=[f"frame {i}" for i in range(5)], columns=3, padding=4, label_height=16)
    assert sheet.shape == (2 * (20 + 16 + 4) + 4, 3 * (30 + 4) + 4, 3)
    # Image 4 sits in row 1, column 1.
    y, x = 4 + 1 * 40, 4 + 1 * 34
    np.testing.assert_array_equal(sheet[y:y + 20, x:x + 30], 160)
    label_strip = sheet[y + 20:y + 36, x:x + 30]
    assert (label_strip < 128).any()  # some text was drawn


def test_blender_rgba_is_scene_linear_premultiplied_and_bottom_row_first():
    from emotalker.bake.video import blender_rgba

    alpha = np.array([[1.0, 0.5], [0.0, 0.25]], np.float32)[..., None]
    straight = np.array([[[1.0, 0.5, 0.0], [0.2, 0.04045, 1.0]], [[0.3, 0.3, 0.3], [0.0, 1.0, 0.5]]], np.float32)
    out = blender_rgba(straight * alpha, alpha)  # a render is premultiplied
    linear = np.where(straight <= 0.04045, straight / 12.92, ((straight + 0.055) / 1.055) ** 2.4)
    expected = np.concatenate([linear * alpha, alpha], -1)[::-1]
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)
    assert out[1, 0, 0] == 1.0 and out[0, 0, 3] == 0.0  # the top-left pixel is now the last row's first
