"""make-sample: speech and visemes, emotions, clip plans, cameras; and (with bpy) the ci preset end to end."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from emotalker.core.bundle import EMOTIONS
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
