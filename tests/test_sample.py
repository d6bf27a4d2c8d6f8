"""make-sample: speech and visemes, emotions, clip plans, cameras; and (with bpy) the ci preset end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emotalker.core.base.emotions import EMOTIONS
from emotalker.sample.emotions import STYLES, emotion_offsets
from emotalker.sample.generate import blinks, plan_clips
from emotalker.sample.visemes import BILABIALS, mouth_track, speech_envelope, viseme_of

FPS = 25.0


def espeak_or_skip():
    from emotalker.sample.phonemes import Espeak, EspeakError

    try:
        Espeak._load()
    except EspeakError as exc:
        pytest.skip(str(exc))
    return Espeak


def lips_shut(jaw_open, lips_part):
    return jaw_open < 0.01 and lips_part < 0.05


# -- speech and mouth (needs libespeak-ng, not Blender) -------------------------


@pytest.mark.parametrize("text, voice", [
    ("Bob made pancakes for everybody this morning.", ("en-us", 150)),
    ("Maybe we can meet by the market at five.", ("en+f3", 200)),
    ("Put more pepper in the soup, it is bland.", ("en+m3", 170)),
])
def test_mouth_follows_speech(text, voice):
    from emotalker.sample.phonemes import Voice

    speech = espeak_or_skip().synthesize(text, Voice(*voice))
    assert speech.sample_rate > 8000 and len(speech.phonemes) > 10
    starts = [p.start for p in speech.phonemes]
    assert starts == sorted(starts) and 0 <= starts[0] and starts[-1] <= speech.duration + 0.05
    T = int(speech.duration * FPS)
    loud = speech_envelope(speech.samples, speech.sample_rate, T, FPS, 0.06)
    m = mouth_track(speech.phonemes, speech.duration, T, FPS, loudness=loud)
    env = speech_envelope(speech.samples, speech.sample_rate, T, FPS, 0.04)
    assert np.corrcoef(m.jaw_open, env)[0, 1] >= 0.5
    bilabials = [p for p in speech.phonemes if p.name in BILABIALS]
    assert bilabials
    for p in bilabials:
        near = [f for f in range(T) if abs(f / FPS - p.start) <= 0.04]
        assert any(lips_shut(m.jaw_open[f], m.expr["lips_part"][f]) for f in near), p


def test_viseme_classes():
    assert {viseme_of(p) for p in "pbm"} == {"PP"}
    assert viseme_of("A:") == "AA" and viseme_of("u:") == "U" and viseme_of("f") == "FF"
    assert viseme_of("_:") == "sil" and viseme_of("") == "sil"


def test_envelope_is_loudness():
    sr = 16000
    x = np.zeros(sr, np.float32)
    x[sr // 2 :] = 0.5 * np.sin(np.arange(sr // 2) * 0.3)
    env = speech_envelope(x, sr, 25, FPS)
    assert env[:11].max() < 1e-6 and np.allclose(env[14:], 0.5 / np.sqrt(2), atol=0.02)


# -- emotions, plans, blinks ------------------------------------------------------


def test_emotion_offsets_scale_with_intensity():
    from standin_rig import EXPR_NAMES

    for e in EMOTIONS:
        lo, hi = emotion_offsets(e, 1.0, EXPR_NAMES), emotion_offsets(e, 3.0, EXPR_NAMES)
        assert np.allclose(hi.expr, 3 * lo.expr, atol=1e-6) and np.allclose(hi.neck, 3 * lo.neck, atol=1e-6)
        if e != "neutral":
            assert np.abs(hi.expr).sum() > 0 and hi.skin.as_array().sum() > lo.skin.as_array().sum()
    assert all(name in EXPR_NAMES for s in STYLES.values() for name in s.expr)
    assert emotion_offsets("angry", 3, EXPR_NAMES).skin.flush > 0.5 and emotion_offsets("fear", 3, EXPR_NAMES).skin.pallor > 0.5


@pytest.mark.parametrize("n", [48, 80])
def test_clip_plan_covers_every_emotion_and_level(n):
    plans = plan_clips(n, seed=3)
    assert len(plans) == n and len({p.id for p in plans}) == n
    regular = [p for p in plans if not p.held_out]
    train = [p for p in regular if p.split == "train"]
    test = [p for p in regular if p.split == "test"]
    combos = {("neutral", 1.0)} | {(e, lv) for e in EMOTIONS[1:] for lv in (1.0, 2.0, 3.0)}
    assert {(p.emotion, p.intensity) for p in train} == combos
    assert {p.emotion for p in test} == set(EMOTIONS) and {p.intensity for p in test} == {1.0, 2.0, 3.0}
    held = [p for p in plans if p.held_out]
    assert held and all(p.split == "test" and p.intensity in (1.5, 2.5) for p in held)
    if n == 80:
        assert len(train) / len(test) >= 8.5  # 9:1 by clip


def test_blink_rate_is_natural():
    rng = np.random.default_rng(0)
    b = blinks(rng, int(600 * FPS), FPS)  # ten minutes
    onsets = np.sum((b[1:] >= 0.5) & (b[:-1] < 0.5))
    assert 120 <= onsets <= 220  # 12 - 22 a minute
    peaks = [b[i] for i in range(1, len(b) - 1) if b[i] >= 0.5 and b[i] >= b[i - 1] and b[i] > b[i + 1]]
    assert np.mean(np.array(peaks) == 1.0) > 0.95  # the lids shut fully on at least one frame
    assert b.min() == 0 and b.max() == 1


def test_blender_camera_matches_opencv_projection():
    from emotalker.sample.blender_render import blender_camera

    W, H = 320, 240
    K = np.array([[400.0, 0, 150.0], [0, 400.0, 130.0], [0, 0, 1]])
    view = np.eye(4)
    view[:3, :3] = np.diag([1.0, -1.0, -1.0])
    view[:3, 3] = [0.01, -0.02, 0.6]
    cam = blender_camera(K, view, W, H)
    p = np.array([0.03, 0.05, 0.02, 1.0])
    # Blender's pinhole: camera looks down -Z; image plane of width sensor at distance lens, shifted.
    local = np.linalg.inv(cam["matrix_world"]) @ p
    x, y = local[0] / -local[2], local[1] / -local[2]
    scale = cam["lens"] / cam["sensor"] * W  # pixels per unit of x/z
    u = W / 2 + x * scale - cam["shift_x"] * W
    v = H / 2 - y * scale + cam["shift_y"] * W
    q = view @ p
    assert np.allclose([u, v], [K[0, 0] * q[0] / q[2] + K[0, 2], K[1, 1] * q[1] / q[2] + K[1, 2]], atol=1e-6)


# -- the ci preset end to end (Blender) ---------------------------------------------


@pytest.fixture(scope="module")
def ci_sample(tmp_path_factory):
    pytest.importorskip("bpy")
    espeak_or_skip()
    from emotalker.sample.generate import PRESETS, make_sample

    out = tmp_path_factory.mktemp("sample") / "ds"
    make_sample(out, PRESETS["ci"], progress="none", log=lambda *a: None)  # the procedural head
    return out


@pytest.mark.blender
def test_ci_sample_loads_and_is_complete(ci_sample):
    from emotalker.core.datasets.dataset import Dataset

    ds = Dataset.open(ci_sample)
    ds.validate()
    assert len(ds.clips) == 4 and ds.split("train") and ds.split("test")
    assert any(c.held_out for c in ds.clips)
    for c in ds.clips:
        tr = ds.tracking(c.id)
        assert len(tr) == ds.n_frames(c.id) == 30
        f = ds.frame(c.id, 10)
        assert f[..., 3].max() == 1.0 and f[0, 0, 3] == 0.0  # head opaque, corners empty
        assert np.ptp(tr.viewmat[:, :3, 3], axis=0).max() > 1e-4  # camera jitter
        import soundfile

        info = soundfile.info(str(ds.audio_path(c.id)))
        assert info.samplerate == 16000 and abs(info.duration - 30 / ds.fps) < 0.05


@pytest.mark.blender
def test_ci_frames_rerender_to_the_same_silhouette(ci_sample):
    from emotalker.core.datasets.dataset import Dataset

    from emotalker.sample.checks import silhouette_iou

    ds = Dataset.open(ci_sample)
    for c in ds.clips:
        assert silhouette_iou(ds, c.id, stride=3).min() >= 0.98, c.id


@pytest.mark.blender
def test_ci_mouth_agrees_with_the_audio(ci_sample):
    from emotalker.core.datasets.dataset import Dataset
    from emotalker.sample.checks import bilabial_closure_delays, jaw_envelope_correlation

    ds = Dataset.open(ci_sample)
    n_bilabials = 0
    for c in ds.clips:
        assert jaw_envelope_correlation(ds, c.id) >= 0.5, c.id
        if "lips_upper" in ds.flame_model().regions:  # measured on the posed mesh
            delays = bilabial_closure_delays(ds, c.id)
            assert all(d <= 0.04 for _, _, d in delays), (c.id, delays)
        else:  # a rig without lip regions: from the parameters
            meta = json.loads((ci_sample / "clips" / c.id / "meta.json").read_text())
            tr, lips_part = ds.tracking(c.id), ds.flame_model().expr_index("lips_part")
            delays = [(n, t) for n, t in meta["phonemes"] if n in BILABIALS]
            for name, when in delays:
                near = [f for f in range(len(tr)) if abs(f / ds.fps - when) <= 0.04]
                assert any(lips_shut(tr.jaw[f, 0], tr.expr[f, lips_part]) for f in near), (c.id, name, when)
        n_bilabials += len(delays)
    assert n_bilabials >= 4


@pytest.mark.blender
def test_ci_sample_resumes_and_refuses_other_settings(ci_sample, tmp_path):
    import os
    import shutil
    from dataclasses import replace

    from emotalker.core.base.errors import InputError
    from emotalker.sample.generate import PRESETS, make_sample

    copy = tmp_path / "ds"
    shutil.copytree(ci_sample, copy)
    victim = sorted((copy / "clips").iterdir())[1]
    shutil.rmtree(victim)
    stamp = {p.name: os.path.getmtime(p / "tracking.npz") for p in (copy / "clips").iterdir()}
    logs = []
    from emotalker.core.rig.flame import FlameModel

    rig = FlameModel.load(copy / "flame_model.npz")
    make_sample(copy, PRESETS["ci"], model=rig, progress="none", log=logs.append)
    assert "resuming: 3 of 4" in logs[0] and (victim / "tracking.npz").exists()
    assert all(os.path.getmtime(copy / "clips" / n / "tracking.npz") == m for n, m in stamp.items())
    with pytest.raises(InputError, match="other settings"):
        make_sample(copy, replace(PRESETS["ci"], seed=9), model=rig, progress="none")


@pytest.mark.blender
def test_contact_sheet(ci_sample, tmp_path):
    from PIL import Image

    from emotalker.cli.main import main as cli

    assert cli(["show-dataset", str(ci_sample), str(tmp_path / "sheet.png"), "--thumb", "64"]) == 0
    with Image.open(tmp_path / "sheet.png") as im:
        emotions = {json.loads((ci_sample / "dataset.json").read_text())["clips"][i]["emotion"] for i in range(4)}
        assert im.size[1] == 18 + 64 * len(emotions)


# -- skin effects -------------------------------------------------------------------


def standin_masks():
    from standin_rig import standin_model

    from emotalker.sample.masks import skin_masks

    m = standin_model()
    J = m.J_regressor @ m.v_template
    return m, J, skin_masks(m.v_template, m.faces, J[3], J[4])


def test_skin_masks_sit_where_they_belong():
    m, J, masks = standin_masks()
    v, eye_y = m.v_template, J[3, 1]
    w = lambda k: masks[k] / masks[k].sum()  # noqa: E731
    assert (w("forehead") @ v[:, 1]) > eye_y + 0.02 and (w("cheeks") @ v[:, 1]) < eye_y
    assert abs(w("furrow") @ v[:, 0]) < 0.005 and (w("cheeks") @ np.abs(v[:, 0])) > 0.02
    assert (masks["face"][v[:, 2] < -0.05] == 0).all()  # nothing on the back of the head


def test_flush_and_pallor_change_colour_nonlinearly():
    from emotalker.sample.masks import skin_colour

    m, _, masks = standin_masks()
    base = skin_colour(m.albedo, masks, 0.0, 0.0)
    assert np.allclose(base, m.albedo, atol=1e-6)
    red = skin_colour(m.albedo, masks, 1.0, 0.0)
    cheek = masks["cheeks"] > 0.5
    assert cheek.any() and (red[cheek, 0] / red[cheek, 1] > 1.3 * m.albedo[cheek, 0] / m.albedo[cheek, 1]).all()
    pale = skin_colour(m.albedo, masks, 0.0, 1.0)
    sat = lambda c: c.max(1) - c.min(1)  # noqa: E731
    face = masks["face"] > 0.5
    assert (sat(pale[face]) < sat(m.albedo[face])).all()


@pytest.mark.blender
def test_renderer_shows_emotion_skin(tmp_path):
    pytest.importorskip("bpy")
    from PIL import Image

    from emotalker.sample.blender_render import HeadRenderer, RenderSettings
    from emotalker.sample.emotions import Skin
    from emotalker.sample.generate import base_camera

    m, _, masks = standin_masks()
    K, view = base_camera(m.v_template, 96, 0.55)
    r = HeadRenderer(m.v_template, m.faces, m.albedo, masks, RenderSettings(96, 96, 2))
    r.set_camera(K, view)
    out = {}
    for name, skin in (("plain", Skin()), ("angry", Skin(flush=1.0, furrow=1.0)), ("surprised", Skin(forehead=1.0))):
        r.set_skin(skin)
        r.render(m.v_template, tmp_path / f"{name}.png")
        out[name] = np.asarray(Image.open(tmp_path / f"{name}.png"), np.float32) / 255
    a = out["plain"][..., 3] > 0.5
    assert np.array_equal(a, out["angry"][..., 3] > 0.5)  # same geometry, same silhouette
    redness = lambda im: (im[..., 0] - im[..., 1])[a].mean()  # noqa: E731
    assert redness(out["angry"]) > redness(out["plain"]) + 0.02
    # Forehead lines: more fine detail (vertical gradient energy) in the upper face.
    top = slice(10, 40)
    detail = lambda im: np.abs(np.diff(im[top, :, :3].mean(-1), axis=0)).mean()  # noqa: E731
    assert detail(out["surprised"]) > 1.2 * detail(out["plain"])
