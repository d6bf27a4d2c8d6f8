"""The dataset reader: loading, caching, and one clear InputError per problem."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from standin_rig import write_tiny_dataset

from emotalker.core.datasets.dataset import Dataset, Tracking, load_tracking
from emotalker.core.base.errors import InputError


@pytest.fixture()
def tiny(tmp_path):
    return write_tiny_dataset(tmp_path / "ds")


def edit_json(path, fn):
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


def rewrite_tracking(path, **changes):
    with np.load(path) as npz:
        data = {k: npz[k] for k in npz.files}
    for k, v in changes.items():
        if v is None:
            data.pop(k)
        else:
            data[k] = v
    np.savez(path, **data)


def test_loads_and_caches(tiny):
    ds = Dataset.open(tiny)
    assert (ds.fps, ds.width, ds.height) == (25.0, 16, 16)
    assert [c.id for c in ds.clips] == ["clip0", "clip1"]
    assert [c.id for c in ds.split("test")] == ["clip0"] and [c.id for c in ds.split("train")] == ["clip1"]
    assert ds.clip("clip1").emotion == "sad" and ds.clip("clip1").intensity == 2.0
    tr = ds.tracking("clip0")
    assert len(tr) == 4 and tr.K.shape == (4, 3, 3) and tr.expr.dtype == np.float32
    assert ds.tracking("clip0") is tr
    f = ds.frame("clip0", 3)
    assert f.shape == (16, 16, 4) and f.dtype == np.float32 and 0 <= f.min() and f.max() <= 1
    assert ds.frame("clip0", 3) is f
    assert ds.n_frames("clip1") == 4
    assert ds.audio_path("clip1").name == "audio.wav"
    assert ds.flame_model() is ds.flame_model()
    ds.validate()
    with pytest.raises(IndexError):
        ds.frame("clip0", 4)


def test_single_K_is_broadcast(tiny):
    path = tiny / "clips/clip0/tracking.npz"
    K = np.array([[20, 0, 8], [0, 20, 8], [0, 0, 1]], np.float32)
    rewrite_tracking(path, K=K)
    tr = Dataset.open(tiny).tracking("clip0")
    assert tr.K.shape == (4, 3, 3) and np.array_equal(tr.K[2], K)


def test_frame_cache_is_bounded(tiny):
    ds = Dataset.open(tiny)
    ds._frame_cache = 2
    for t in range(4):
        ds.frame("clip0", t)
    assert len(ds._frames) == 2


def expect(path, match, fn):
    with pytest.raises(InputError, match=match) as err:
        fn()
    assert err.value.path == os.fspath(path), err.value
    return err.value


def test_missing_folder_and_files(tmp_path, tiny):
    expect(tmp_path / "nope", "dataset folder not found", lambda: Dataset.open(tmp_path / "nope"))
    (tiny / "flame_model.npz").rename(tiny / "x.npz")
    expect(tiny / "flame_model.npz", "FLAME model file not found", lambda: Dataset.open(tiny))
    (tiny / "x.npz").rename(tiny / "flame_model.npz")
    (tiny / "dataset.json").unlink()
    expect(tiny / "dataset.json", "not found", lambda: Dataset.open(tiny))


def test_bad_dataset_json(tiny):
    meta = tiny / "dataset.json"
    edit_json(meta, lambda m: m.update(format="other/2"))
    expect(meta, "format must be", lambda: Dataset.open(tiny))
    edit_json(meta, lambda m: m.update(format="emotalker-dataset/1"))
    edit_json(meta, lambda m: m["clips"][1].update(emotion="joyful"))
    expect(meta, "clip 'clip1': unknown emotion 'joyful'", lambda: Dataset.open(tiny))
    edit_json(meta, lambda m: m["clips"][1].update(emotion="sad", intensity=4))
    expect(meta, r"clip .clip1.: intensity must be in \[0, 3\], got 4", lambda: Dataset.open(tiny))
    edit_json(meta, lambda m: m["clips"][1].update(intensity=1, split="val"))
    expect(meta, "split must be", lambda: Dataset.open(tiny))
    edit_json(meta, lambda m: m["clips"][1].update(split="train", id="clip0"))
    expect(meta, "appears twice", lambda: Dataset.open(tiny))
    edit_json(meta, lambda m: m["clips"][1].update(id="../evil"))
    expect(meta, "invalid id", lambda: Dataset.open(tiny))
    edit_json(meta, lambda m: m.pop("fps"))
    expect(meta, "missing field 'fps'", lambda: Dataset.open(tiny))


def test_missing_frame(tiny):
    (tiny / "clips/clip0/images/000001.png").unlink()
    ds = Dataset.open(tiny)
    expect(tiny / "clips/clip0/images/000001.png", "missing frame 1", lambda: ds.tracking("clip0"))


def test_length_mismatch(tiny):
    (tiny / "clips/clip0/images/000003.png").unlink()
    ds = Dataset.open(tiny)
    expect(tiny / "clips/clip0/tracking.npz", "tracking has 4 frames but images/ has 3", lambda: ds.tracking("clip0"))


@pytest.mark.parametrize("change, match", [
    ({"jaw": np.zeros((4, 2), np.float32)}, r"jaw must be \[4, 3\]"),
    ({"blink": np.zeros((3,), np.float32)}, r"blink must be \[4\]"),
    ({"viewmat": np.zeros((4, 3, 4), np.float32)}, r"viewmat must be \[4, 4, 4\]"),
    ({"K": np.zeros((2, 3, 3), np.float32)}, r"K must be \[3,3\] or \[4,3,3\]"),
    ({"expr": np.zeros((4, 60), np.float32)}, "expr has 60 components but the dataset's rig has only 50"),
    ({"eyes": None}, "tracking is missing eyes"),
    ({"neck": np.full((4, 3), np.nan, np.float32)}, "neck holds NaN"),
])
def test_bad_tracking(tiny, change, match):
    path = tiny / "clips/clip1/tracking.npz"
    rewrite_tracking(path, **change)
    expect(path, match, lambda: Dataset.open(tiny).tracking("clip1"))


def test_corrupt_files(tiny):
    path = tiny / "clips/clip1/tracking.npz"
    path.write_bytes(path.read_bytes()[:40])
    expect(path, "not a readable .npz", lambda: load_tracking(path))
    frame = tiny / "clips/clip0/images/000002.png"
    frame.write_bytes(b"not a png")
    expect(frame, "not a readable PNG", lambda: Dataset.open(tiny).frame("clip0", 2))


def test_wrong_frame_size_and_missing_audio(tiny):
    from PIL import Image

    frame = tiny / "clips/clip0/images/000000.png"
    Image.new("RGBA", (8, 16)).save(frame)
    expect(frame, "frame is 8x16 but dataset.json says 16x16", lambda: Dataset.open(tiny).frame("clip0", 0))
    (tiny / "clips/clip1/audio.wav").unlink()
    expect(tiny / "clips/clip1/audio.wav", "audio file not found", lambda: Dataset.open(tiny).audio_path("clip1"))
    expect(tiny / "dataset.json", "no clip called 'clip9'", lambda: Dataset.open(tiny).clip("clip9"))


def test_tracking_round_trip(tmp_path):
    T = 3
    tr = Tracking(expr=np.ones((T, 5), np.float32), jaw=np.zeros((T, 3), np.float32), neck=np.zeros((T, 3), np.float32),
                  eyes=np.zeros((T, 6), np.float32), eyelids=np.zeros((T, 2), np.float32), blink=np.linspace(0, 1, T, dtype=np.float32),
                  K=np.repeat(np.eye(3, dtype=np.float32)[None], T, 0), viewmat=np.repeat(np.eye(4, dtype=np.float32)[None], T, 0))
    tr.save(tmp_path / "t.npz")
    back = load_tracking(tmp_path / "t.npz", n_expr=5)
    assert len(back) == T and np.array_equal(back.blink, tr.blink) and np.array_equal(back.expr, tr.expr)
