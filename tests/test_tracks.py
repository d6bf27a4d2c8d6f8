"""Emotion tracks: validation errors, per-mode values computed by hand, and agreement with Blender."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emotalker.core.base.emotions import EMOTIONS
from emotalker.core.base.errors import InputError
from emotalker.bake.tracks import Tracks, evaluate_fcurve, load_tracks_or_shorthand


def _tracks(channels, fps=25):
    return Tracks.from_dict({"format": "emotalker-tracks/1", "fps": fps, "tracks": channels}, source="t.json")


def test_constant_holds_previous_key():
    kx, ky = np.array([1.0, 5.0, 9.0]), np.array([0.2, 0.8, 0.4])
    t = np.array([-3, 1, 4.9, 5, 8, 9, 12.0])
    np.testing.assert_allclose(evaluate_fcurve(kx, ky, t, "constant"), [0.2, 0.2, 0.2, 0.8, 0.8, 0.4, 0.4])


def test_linear_between_keys_constant_outside():
    kx, ky = np.array([1.0, 11.0]), np.array([0.0, 1.0])
    t = np.array([0, 1, 3.5, 6, 11, 20.0])
    np.testing.assert_allclose(evaluate_fcurve(kx, ky, t, "linear"), [0, 0, 0.25, 0.5, 1, 1])


def test_bezier_cont_accel_two_keys_is_flat_ease():
    # End keys get flat handles at 1/3 of the interval: y(u) = 3(1-u)u^2 + u^3.
    kx, ky = np.array([1.0, 4.0]), np.array([0.0, 1.0])
    got = evaluate_fcurve(kx, ky, np.array([2.0, 2.5, 3.0]), "bezier", "cont_accel")
    np.testing.assert_allclose(got, [7 / 27, 0.5, 20 / 27], atol=1e-12)


def test_bezier_cont_accel_inner_slope_solves_spline():
    # Keys (0,0) (1,1) (2,2), flat ends: 4 m1 = 3 (1 + 1) -> m1 = 1.5 (within the clamp [0, 3]).
    # On [0,1] the handles are (1/3, 0) and (2/3, 1 - 1.5/3): at u = 1/2, y = 3/8 * 0.5 + 1/8.
    kx, ky = np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 2.0])
    got = evaluate_fcurve(kx, ky, np.array([0.5, 1.0, 1.5]), "bezier", "cont_accel")
    np.testing.assert_allclose(got, [0.3125, 1.0, 2 - 0.3125], atol=1e-12)


def test_bezier_cont_accel_extremum_is_flat():
    # The middle key is a maximum: its slope is clamped to 0, so y(u) on the first segment is the flat ease.
    kx, ky = np.array([0.0, 3.0, 6.0]), np.array([0.0, 1.0, 0.0])
    got = evaluate_fcurve(kx, ky, np.array([1.0, 4.0]), "bezier", "cont_accel")
    np.testing.assert_allclose(got, [7 / 27, 20 / 27], atol=1e-12)


def test_bezier_no_smoothing_solves_for_the_frame():
    # Flat end handles reaching 1/2.5614 of the interval; at parameter s = 1/3 the frame is
    # x = 3(2/3)^2(1/3)a + 3(2/3)(1/3)^2(1-a) + 1/27 with a = 1/2.5614 and the value is 7/27.
    a = 1 / 2.5614
    x = 4 / 9 * a + 2 / 9 * (1 - a) + 1 / 27
    got = evaluate_fcurve(np.array([0.0, 1.0]), np.array([0.0, 1.0]), np.array([x, 0.5]), "bezier", "none")
    np.testing.assert_allclose(got, [7 / 27, 0.5], atol=1e-9)


def test_weights_normalised_and_neutral_when_empty():
    tracks = _tracks({
        "emotion.happy": {"interpolation": "linear", "keys": [[1, 0.0], [11, 1.0]]},
        "emotion.sad": {"interpolation": "constant", "keys": [[1, 1.0]]},
        "intensity": {"interpolation": "linear", "keys": [[1, 0.0], [11, 3.0]]},
        "blink": {"keys": []},
    })
    out = tracks.evaluate(np.array([1, 6, 11]))
    happy, sad = EMOTIONS.index("happy"), EMOTIONS.index("sad")
    np.testing.assert_allclose(out.emotion.sum(1), 1.0)
    np.testing.assert_allclose(out.emotion[:, happy], [0.0, 0.5 / 1.5, 0.5])
    np.testing.assert_allclose(out.emotion[:, sad], [1.0, 1 / 1.5, 0.5])
    np.testing.assert_allclose(out.intensity, [0.0, 1.5, 3.0])
    np.testing.assert_allclose(out.blink, 0.0)

    empty = _tracks({"emotion.angry": {"keys": [[1, 0.0]]}}).evaluate(np.arange(1, 4))
    assert out.emotion.shape == (3, 8) and empty.emotion.shape == (3, 8)
    np.testing.assert_array_equal(empty.emotion, np.tile(np.eye(8)[EMOTIONS.index("neutral")], (3, 1)))
    np.testing.assert_allclose(empty.intensity, 1.0)


def test_shorthand_is_constant_tracks():
    out = load_tracks_or_shorthand(None, "happy", 2.5, fps=30).evaluate(np.arange(1, 100))
    assert np.all(out.emotion[:, EMOTIONS.index("happy")] == 1.0)
    assert np.all(out.intensity == 2.5)
    with pytest.raises(InputError, match="unknown emotion 'joyful'"):
        load_tracks_or_shorthand(None, "joyful", 1.0)
    with pytest.raises(InputError, match=r"intensity must be in \[0, 3\]"):
        load_tracks_or_shorthand(None, "happy", 3.5)


def test_round_trip_through_file(tmp_path):
    doc = {"format": "emotalker-tracks/1", "fps": 25, "tracks": {
        "emotion.happy": {"interpolation": "bezier", "keys": [[1, 0.0], [40, 1.0]]},
        "emotion.sad": {"keys": [[40, 0.0], [80, 1.0]]},
        "intensity": {"keys": [[1, 1.0], [80, 2.5]]},
        "blink": {"keys": []}}}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    tracks = Tracks.load(path)
    assert set(tracks.channels) == {"emotion.happy", "emotion.sad", "intensity"}
    again = Tracks.from_dict(tracks.to_dict())
    frames = np.arange(-5, 90)
    np.testing.assert_array_equal(again.evaluate(frames).emotion, tracks.evaluate(frames).emotion)
    assert tracks.key_range() == (1.0, 80.0)
    tracks.require_keys_within(1, 80, "the audio")
    with pytest.raises(InputError, match=r"t.json: channel 'emotion.sad' has a key at frame 80, outside the audio"):
        tracks.require_keys_within(1, 79, "the audio")


@pytest.mark.parametrize("channels, message", [
    ({"emotion.excited": {"keys": [[1, 1.0]]}}, "channel 'emotion.excited': unknown emotion 'excited'"),
    ({"loudness": {"keys": [[1, 1.0]]}}, "unknown channel 'loudness'"),
    ({"emotion.happy": {"interpolation": "cubic", "keys": [[1, 1.0]]}}, "channel 'emotion.happy': unknown interpolation 'cubic'"),
    ({"emotion.happy": {"keys": [[1, 0.0], [1, 1.0]]}}, "channel 'emotion.happy': key frames must increase"),
    ({"emotion.happy": {"keys": [[5, 0.0], [2, 1.0]]}}, "channel 'emotion.happy': key frames must increase"),
    ({"intensity": {"keys": [[1, 4.0]]}}, r"channel 'intensity': key 0 at frame 1 has value 4, outside \[0, 3\]"),
    ({"blink": {"keys": [[1]]}}, "channel 'blink': key 0 is \\[1\\]"),
    ({"blink": {"keys": [["a", 1]]}}, "channel 'blink': key 0"),
    ({"blink": {"keys": [[1, 0.5]], "ease": 1}}, "channel 'blink' has unknown fields"),
])
def test_bad_tracks_name_file_and_channel(tmp_path, channels, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"format": "emotalker-tracks/1", "fps": 25, "tracks": channels}))
    with pytest.raises(InputError, match=message) as err:
        Tracks.load(path)
    assert str(err.value).startswith(str(path))


def test_bad_documents(tmp_path):
    path = tmp_path / "t.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match="not a valid tracks file"):
        Tracks.load(path)
    path.write_text(json.dumps({"format": "emotalker-tracks/2", "fps": 25, "tracks": {}}))
    with pytest.raises(InputError, match="format is 'emotalker-tracks/2'"):
        Tracks.load(path)
    path.write_text(json.dumps({"format": "emotalker-tracks/1", "fps": 0, "tracks": {}}))
    with pytest.raises(InputError, match="fps must be a positive number"):
        Tracks.load(path)
    with pytest.raises(InputError, match="tracks file not found"):
        Tracks.load(tmp_path / "missing.json")


# Keys that exercise every handle rule: an extremum, a clamped handle on a steep rise,
# intervals more than 5x apart, a plateau, plus a few random sets.
_BLENDER_KEYS = [
    ([1, 10, 14, 30, 33, 60], [0.0, 0.4, 0.5, 1.5, 1.6, 0.0]),
    ([1, 2, 40, 41, 80], [0.0, 0.9, 1.0, 0.2, 0.2]),
    ([1, 5, 9, 13], [0.0, 0.05, 0.95, 1.0]),
    ([3, 50], [0.7, 0.1]),
    ([7], [0.4]),
] + [
    (np.sort(r.choice(np.arange(1, 100), n, replace=False)).tolist(), np.round(r.uniform(0, 1, n), 3).tolist())
    for r, n in [(np.random.default_rng(s), 3 + s % 5) for s in range(12)]
]


@pytest.mark.blender
@pytest.mark.parametrize("interpolation", ["CONSTANT", "LINEAR", "BEZIER"])
@pytest.mark.parametrize("smoothing", ["NONE", "CONT_ACCEL"])
def test_matches_blender_fcurves(interpolation, smoothing):
    bpy = pytest.importorskip("bpy")
    from bpy_extras import anim_utils

    obj = bpy.data.objects.new("emotalker_track_probe", None)
    try:
        for kx, ky in _BLENDER_KEYS:
            obj.animation_data_clear()
            obj["weight"] = 0.0
            for f, v in zip(kx, ky):
                obj["weight"] = v
                obj.keyframe_insert('["weight"]', frame=f)  # handles: the default, auto-clamped
            anim = obj.animation_data
            fcurve = anim_utils.action_get_channelbag_for_slot(anim.action, anim.action_slot).fcurves[0]
            assert all(k.handle_left_type == "AUTO_CLAMPED" for k in fcurve.keyframe_points)
            fcurve.auto_smoothing = smoothing
            for key in fcurve.keyframe_points:
                key.interpolation = interpolation
            fcurve.update()
            t = np.arange(kx[0] - 3, kx[-1] + 3.01, 0.25)
            theirs = np.array([fcurve.evaluate(x) for x in t])
            ours = evaluate_fcurve(np.array(kx, float), np.array(ky, float), t, interpolation.lower(), smoothing.lower())
            np.testing.assert_allclose(ours, theirs, atol=1e-4, err_msg=f"keys {list(zip(kx, ky))}")
            bpy.data.actions.remove(anim.action)
    finally:
        bpy.data.objects.remove(obj)
