"""`emotalker bake` end to end on a tiny avatar: tracks per frame, PLY/PNG/MP4 exports, resume, bad input, batch."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bake_fixture import FPS, make_speech, make_tiny_avatar
from stage1_rig import tiny_rig
from emotalker.core.render.camera import front_camera
from emotalker.cli.main import main
from emotalker.bake.clip import ClipSpec, RunOptions, bake_clip
from emotalker.bake.ply import ply_property_names
from emotalker.core.base.emotions import EMOTIONS
from emotalker.core.base.errors import InputError
from emotalker.core.rig.flame import FlameModel

REPO = Path(__file__).resolve().parent.parent
QUIET = RunOptions(progress="none")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bake_inputs")
    make_tiny_avatar(root / "avatar")
    make_speech(root / "speech.wav", seconds=1.2)  # 30 frames at 25 fps
    return root


def _tracks(path: Path, tracks: dict) -> str:
    path.write_text(json.dumps({"format": "emotalker-tracks/1", "fps": FPS, "tracks": tracks}))
    return str(path)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_bake_options_keep_their_names_and_are_the_clip_and_run_fields():
    from emotalker.bake.demo import DEMO_OUT, DEMO_RESOLUTION
    from emotalker.cli.bake import bake_request
    from emotalker.cli.main import build_parser
    from emotalker.cli.options import config_from_args

    parse = build_parser().parse_args
    args = parse(["bake", "av", "--audio", "a.wav", "--out", "o", "--tracks", "t.json", "--emotion", "happy",
                  "--intensity", "2", "--ply", "--png", "--mp4", "--frames", "1:5", "--fps", "30", "--camera", "c.json",
                  "--resolution", "64", "--flame-curves", "f.npz", "--sh-degree", "1", "--up-axis", "z", "--name", "n",
                  "--no-emotion", "--overwrite", "--device", "cpu", "--threads", "1", "--chunk", "4", "--progress",
                  "json"])
    assert bake_request(args) == (
        ClipSpec(avatar="av", audio="a.wav", out="o", tracks="t.json", emotion="happy", intensity=2.0, ply=True,
                 png=True, mp4=True, frames="1:5", fps=30.0, camera="c.json", resolution=64, flame_curves="f.npz",
                 sh_degree=1, up_axis="z", name="n", no_emotion=True),
        RunOptions(device="cpu", threads=1, chunk=4, overwrite=True, progress="json"))
    # Defaults are the dataclasses' (the CLI's device is auto); no output asked for means the PLY sequence.
    assert bake_request(parse(["bake", "av", "--audio", "a.wav", "--out", "o"])) == (
        ClipSpec("av", "a.wav", "o", ply=True), RunOptions())
    for argv in (["bake", "av", "--out", "o"], ["bake", "av", "--audio", "a.wav", "--out", "o", "--sh-degree", "4"]):
        with pytest.raises(SystemExit):
            parse(argv)
    demo = parse(["demo"])
    assert (demo.out, demo.resolution, demo.threads, demo.progress) == (DEMO_OUT, DEMO_RESOLUTION, None, "bar")
    assert config_from_args(RunOptions, parse(["bake-batch", "m.json"])) == RunOptions(device="cpu")


def test_tracks_reach_each_frame_as_hand_computed(inputs, tmp_path):
    """constant, linear and bezier channels, evaluated per frame, are what A2E and the eyelids get."""
    tracks = _tracks(tmp_path / "t.json", {
        "emotion.happy": {"interpolation": "constant", "keys": [[1, 0.2], [5, 0.8]]},
        "emotion.sad": {"interpolation": "constant", "keys": [[1, 0.8]]},
        "intensity": {"interpolation": "linear", "keys": [[1, 0.0], [11, 2.0]]},
        "blink": {"interpolation": "bezier", "keys": [[1, 0.0], [11, 1.0]]},
    })
    bake_clip(ClipSpec(avatar=str(inputs / "avatar"), audio=str(inputs / "speech.wav"), out=str(tmp_path / "out"),
                       tracks=tracks, ply=True, frames="1:3"), QUIET)
    with np.load(tmp_path / "out" / "speech_flame.npz") as c:
        weights, intensity, eyelids = c["emotion_weights"], c["intensity"], c["eyelids"]
        assert int(c["frame_start"]) == 1 and len(c["expr"]) == 30  # the curves cover the whole audio
    happy, sad = EMOTIONS.index("happy"), EMOTIONS.index("sad")
    # constant: frame 3 holds key 1 (0.2 vs 0.8), frame 5 on takes key 2 (0.8 vs 0.8); normalised to sum 1.
    np.testing.assert_allclose(weights[2, [happy, sad]], [0.2, 0.8], atol=1e-6)
    np.testing.assert_allclose(weights[4, [happy, sad]], [0.5, 0.5], atol=1e-6)
    # linear: 0 at frame 1 to 2 at frame 11 -> 1.0 at frame 6, 0.4 at frame 3; holds 2.0 after.
    np.testing.assert_allclose(intensity[[2, 5, 20]], [0.4, 1.0, 2.0], atol=1e-6)
    # bezier between two flat end keys is the smoothstep 3u^2 - 2u^3: frame 4 (u = 0.3) -> 0.216, frame 6 -> 0.5.
    np.testing.assert_allclose(eyelids[[3, 5], 0], [0.216, 0.5], atol=1e-6)
    np.testing.assert_array_equal(eyelids[:, 0], eyelids[:, 1])


def test_ply_sequence_meets_the_format(inputs, tmp_path):
    from plyfile import PlyData

    out = tmp_path / "out"
    assert main(["bake", str(inputs / "avatar"), "--audio", str(inputs / "speech.wav"), "--emotion", "happy",
                 "--intensity", "2", "--out", str(out), "--ply", "--frames", "2:6", "--sh-degree", "1",
                 "--up-axis", "z", "--progress", "none"]) == 0
    frames = sorted(out.glob("speech_*.ply"))
    assert [f.name for f in frames] == [f"speech_{i:06d}.ply" for i in range(2, 7)]
    sidecar = json.loads((out / "speech.json").read_text())
    assert sidecar["format"] == "emotalker-plyseq/1"
    assert (sidecar["fps"], sidecar["frame_start"], sidecar["frame_end"]) == (FPS, 2, 6)
    assert (sidecar["sh_degree"], sidecar["up_axis"], sidecar["units"]) == (1, "z", "metres")
    assert (out / sidecar["audio"]).resolve() == (inputs / "speech.wav").resolve()
    names = ply_property_names(1)
    assert sidecar["properties"] == names
    counts, columns = set(), []
    for f in frames:
        ply = PlyData.read(str(f))
        vertex = ply["vertex"]
        assert [p.name for p in vertex.properties] == names
        assert all(vertex.data.dtype[n] == np.dtype("<f4") for n in names)
        counts.add(vertex.count)
        columns.append(np.asarray(vertex["x"]))
    assert counts == {sidecar["count"]}
    assert not np.array_equal(columns[0], columns[-1])  # the face moves


@pytest.mark.blender
def test_ply_frames_import_in_blender(inputs, tmp_path):
    bpy = pytest.importorskip("bpy")
    out = tmp_path / "out"
    bake_clip(ClipSpec(avatar=str(inputs / "avatar"), audio=str(inputs / "speech.wav"), out=str(out), emotion="sad",
                       ply=True, frames="1:3", up_axis="z"), QUIET)
    count = json.loads((out / "speech.json").read_text())["count"]
    for f in sorted(out.glob("speech_*.ply")):
        before = set(bpy.data.objects)
        assert bpy.ops.wm.ply_import(filepath=str(f)) == {"FINISHED"}
        (obj,) = set(bpy.data.objects) - before
        assert len(obj.data.vertices) == count
        assert {"opacity", "scale_0", "rot_3", "f_dc_2", "f_rest_8"} <= set(obj.data.attributes.keys())
        mesh = obj.data
        bpy.data.objects.remove(obj)
        bpy.data.meshes.remove(mesh)


def test_png_mp4_and_camera(inputs, tmp_path):
    import imageio_ffmpeg
    from PIL import Image

    out = tmp_path / "out"
    result = bake_clip(ClipSpec(avatar=str(inputs / "avatar"), audio=str(inputs / "speech.wav"), out=str(out),
                                emotion="happy", mp4=True, resolution=48, frames="1:10"), QUIET)
    pngs = sorted(out.glob("speech_*.png"))
    assert len(pngs) == 10 and not list(out.glob("*.ply"))
    image = np.asarray(Image.open(pngs[0]))
    assert image.shape == (48, 48, 4)
    alpha = image[..., 3]
    assert alpha.max() == 255 and alpha[0, 0] == 0  # the head is opaque, the corner empty
    camera = json.loads(Path(result.outputs["camera"]).read_text())
    assert camera["format"] == "emotalker-camera/1" and camera["width"] == 48
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", result.outputs["mp4"]],
                           capture_output=True, text=True).stderr
    assert "Video:" in probe and "Audio:" in probe

    # A given camera: the same one turned 180 degrees about the view axis renders the image upside down.
    turned = dict(camera)
    turned["viewmat"] = (np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.array(camera["viewmat"])).tolist()
    turned["K"] = camera["K"]
    (tmp_path / "cam.json").write_text(json.dumps(turned))
    bake_clip(ClipSpec(avatar=str(inputs / "avatar"), audio=str(inputs / "speech.wav"), out=str(tmp_path / "o2"),
                       emotion="happy", png=True, camera=str(tmp_path / "cam.json"), frames="1:1"), QUIET)
    flipped = np.asarray(Image.open(tmp_path / "o2" / "speech_000001.png"))
    assert np.abs(flipped[::-1, ::-1, 3].astype(int) - alpha.astype(int)).mean() < 8


def test_edited_flame_curves_feed_back(inputs, tmp_path):
    out = tmp_path / "out"
    opts = dict(avatar=str(inputs / "avatar"), audio=str(inputs / "speech.wav"), emotion="happy", ply=True,
                frames="1:4")
    bake_clip(ClipSpec(out=str(out), **opts), QUIET)
    with np.load(out / "speech_flame.npz") as c:
        edited = {k: c[k] for k in c.files}
    edited["jaw"] = edited["jaw"].copy()
    edited["jaw"][:, 0] += 0.3  # open the mouth
    np.savez(tmp_path / "edited.npz", **edited)
    bake_clip(ClipSpec(out=str(tmp_path / "again"), flame_curves=str(out / "speech_flame.npz"), **opts), QUIET)
    bake_clip(ClipSpec(out=str(tmp_path / "edit"), flame_curves=str(tmp_path / "edited.npz"), **opts), QUIET)
    # Curves fed back unchanged bake the same frames; edited ones change them.
    assert (out / "speech_000002.ply").read_bytes() == (tmp_path / "again" / "speech_000002.ply").read_bytes()
    assert (out / "speech_000002.ply").read_bytes() != (tmp_path / "edit" / "speech_000002.ply").read_bytes()
    # A Stage-1-only avatar (no A2E) bakes from curves alone.
    make_tiny_avatar(tmp_path / "stage1_only", a2e=False)
    bake_clip(ClipSpec(out=str(tmp_path / "s1"), flame_curves=str(out / "speech_flame.npz"),
                       **{**opts, "avatar": str(tmp_path / "stage1_only")}), QUIET)
    assert len(list((tmp_path / "s1").glob("speech_*.ply"))) == 4


def test_stage2_changes_emotional_frames_and_no_emotion_turns_it_off(tmp_path):
    make_tiny_avatar(tmp_path / "avatar", emotion=True)
    make_speech(tmp_path / "speech.wav", seconds=0.4)
    tracks = _tracks(tmp_path / "t.json", {"emotion.happy": {"keys": [[1, 1.0]]},
                                           "intensity": {"interpolation": "linear", "keys": [[1, 0.0], [10, 3.0]]}})
    common = dict(avatar=str(tmp_path / "avatar"), audio=str(tmp_path / "speech.wav"), tracks=tracks, ply=True)
    with_s2 = bake_clip(ClipSpec(out=str(tmp_path / "s2"), **common), QUIET)
    bake_clip(ClipSpec(out=str(tmp_path / "s1"), no_emotion=True, **common), QUIET)
    assert with_s2.emotion_stage
    read = lambda d, f: (tmp_path / d / f"speech_{f:06d}.ply").read_bytes()  # noqa: E731
    assert read("s2", 1) == read("s1", 1)  # intensity 0: Stage 1 exactly
    assert read("s2", 8) != read("s1", 8)  # intensity 2.33: the emotion offsets show


def test_killed_bake_resumes_to_identical_files(inputs, tmp_path):
    speech = make_speech(tmp_path / "speech.wav", seconds=4.0, seed=3)  # 100 frames: room to kill it mid-run
    args = [str(inputs / "avatar"), "--audio", str(speech), "--emotion", "surprised", "--intensity",
            "3", "--ply", "--png", "--resolution", "32"]
    reference = tmp_path / "reference"
    assert main(["bake", *args, "--out", str(reference), "--progress", "none"]) == 0

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "emotalker", "bake", *args, "--out", str(killed), "--progress",
                             "json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        for line in proc.stdout:  # kill it mid-run, once a few frames are out
            if line.startswith("{") and json.loads(line).get("step", 0) >= 6:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    n_before = len(list(killed.glob("speech_*.ply")))
    assert 6 <= n_before < 100, n_before

    result = bake_clip(ClipSpec(avatar=str(inputs / "avatar"), audio=str(speech), out=str(killed),
                                emotion="surprised", intensity=3.0, ply=True, png=True, resolution=32), QUIET)
    assert result.skipped >= n_before - 1 and result.written + result.skipped == 100
    ours, theirs = _digests(killed), _digests(reference)
    assert not [n for n in ours if n.endswith(".part")]
    assert {n: d for n, d in ours.items() if not n.startswith(".")} == {
        n: d for n, d in theirs.items() if not n.startswith(".")}


def test_bad_inputs_fail_clearly_and_leave_frames_intact(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    base = [str(inputs / "avatar"), "--audio", str(inputs / "speech.wav"), "--out", str(out), "--progress", "none"]
    assert main(["bake", *base, "--emotion", "happy", "--ply", "--frames", "1:5"]) == 0
    before = _digests(out)
    make_tiny_avatar(tmp_path / "empty_avatar", a2e=False)
    (tmp_path / "empty_avatar" / "neutral.safetensors").unlink()
    (tmp_path / "silent.wav").write_bytes((inputs / "speech.wav").read_bytes())
    import soundfile as sf

    sf.write(str(tmp_path / "silent.wav"), np.zeros(16000, np.float32), 16000)
    late = _tracks(tmp_path / "late.json", {"emotion.sad": {"keys": [[1, 0.0], [90, 1.0]]}})
    nan_curves = tmp_path / "nan.npz"
    np.savez(nan_curves, expr=np.full((30, 6), np.nan, np.float32), jaw=np.zeros((30, 3)), neck=np.zeros((30, 3)), fps=25.0)
    other_format = tmp_path / "other.npz"
    np.savez(other_format, format=np.str_("emotalker-flame-curves/9"), expr=np.zeros((30, 6), np.float32),
             jaw=np.zeros((30, 3)), neck=np.zeros((30, 3)), fps=25.0)
    cases = {
        "unknown emotion 'joyful'": [*base, "--emotion", "joyful"],
        "key at frame 90, outside the audio": [*base, "--tracks", late],
        "no neutral stage yet": [str(tmp_path / "empty_avatar"), *base[1:], "--emotion", "happy"],
        "no a2e stage": [str(tmp_path / "empty_avatar"), *base[1:], "--emotion", "happy"],
        "silent throughout": [str(inputs / "avatar"), "--audio", str(tmp_path / "silent.wav"), *base[3:], "--emotion", "sad"],
        "reaches outside": [*base, "--emotion", "happy", "--frames", "20:40"],
        "holds NaN": [*base, "--emotion", "happy", "--flame-curves", str(nan_curves)],
        "expected 'emotalker-flame-curves/1'": [*base, "--emotion", "happy", "--flame-curves", str(other_format)],
        "baked from different inputs": [*base, "--emotion", "sad", "--ply"],
    }
    # The Stage-1-less avatar fails on its missing neutral stage first; give it Stage 1 back for the a2e case.
    for expected, argv in cases.items():
        if expected == "no a2e stage":
            make_tiny_avatar(tmp_path / "empty_avatar", a2e=False)
        capsys.readouterr()
        assert main(["bake", *argv]) == 2, expected
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0] and "Traceback" not in err[0], (expected, err)
        assert _digests(out) == before, expected


def test_missing_stage_and_unknown_emotion_raise_input_error(inputs, tmp_path):
    with pytest.raises(InputError, match="unknown emotion"):
        bake_clip(ClipSpec(avatar=str(inputs / "avatar"), audio=str(inputs / "speech.wav"), out=str(tmp_path),
                           emotion="bored", ply=True))
    assert not any(tmp_path.iterdir())


def test_batch_bakes_two_clips_in_parallel_and_resumes(inputs, tmp_path):
    import shutil

    for clip in ("a", "b"):
        shutil.copyfile(inputs / "speech.wav", tmp_path / f"{clip}.wav")
    _tracks(tmp_path / "a.json", {"emotion.happy": {"keys": [[1, 1.0], [20, 0.0]]}})
    manifest = tmp_path / "batch.json"
    manifest.write_text(json.dumps({"format": "emotalker-batch/1",
                                    "defaults": {"avatar": str(inputs / "avatar"), "frames": "1:4"},
                                    "clips": [{"id": "a", "audio": "a.wav", "tracks": "a.json"},
                                              {"id": "b", "audio": "b.wav", "emotion": "sad", "intensity": 2.5},
                                              {"id": "c", "audio": "b.wav", "emotion": "bored"}]}))
    assert main(["bake-batch", str(manifest), "--workers", "2", "--progress", "none"]) == 1
    for clip in ("a", "b"):
        assert len(list((tmp_path / "bake" / clip).glob(f"{clip}_*.ply"))) == 4
    status = json.loads((tmp_path / "batch.status.json").read_text())
    assert status["clips"] == {"a": "done", "b": "done", "c": "failed"}
    assert "unknown emotion 'bored'" in status["failed"]["c"]
    # A re-run skips the finished clips and retries the failed one.
    assert main(["bake-batch", str(manifest), "--workers", "2", "--progress", "none"]) == 1
    status = json.loads((tmp_path / "batch.status.json").read_text())
    assert status["clips"]["a"].startswith("skipped") and status["clips"]["b"].startswith("skipped")


def test_batch_refuses_outputs_outside_its_folder(inputs, tmp_path, capsys):
    manifest = tmp_path / "m" / "batch.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"format": "emotalker-batch/1", "clips": [
        {"id": "x", "audio": str(inputs / "speech.wav"), "avatar": str(inputs / "avatar"), "emotion": "sad",
         "out": "../escaped"}]}))
    assert main(["bake-batch", str(manifest), "--progress", "none"]) == 2
    assert "outside" in capsys.readouterr().err
    assert not (tmp_path / "escaped").exists()


def test_worker_bake_reports_progress_and_render_frame_writes_rgba(inputs, tmp_path):
    from emotalker.worker.server import JobContext
    from emotalker.worker.methods import METHODS

    events: list[dict] = []
    ctx = JobContext(7, events.append)
    result = METHODS["bake"]({"clip": {"avatar": str(inputs / "avatar"), "audio": str(inputs / "speech.wav"),
                                       "out": str(tmp_path / "out"), "emotion": "happy", "frames": "1:5"}}, ctx)
    assert result["frame_end"] == 5 and len(list((tmp_path / "out").glob("speech_*.ply"))) == 5
    steps = [e["step"] for e in events if e.get("event") == "progress"]
    assert steps == [1, 2, 3, 4, 5] and all(e["id"] == 7 for e in events)

    camera = front_camera(tiny_rig(n_expr=6).v_template, 40, 30).to_dict()
    params = {"avatar": str(inputs / "avatar"), "cache": str(tmp_path / "cache"), "frame": 3,
              "curves": result["outputs"]["flame_curves"], **{k: camera[k] for k in ("viewmat", "K", "width", "height")}}
    reply = METHODS["render_frame"](params, ctx)
    assert (reply["width"], reply["height"]) == (40, 30)
    rgba = np.fromfile(reply["path"], np.float32).reshape(30, 40, 4)
    assert rgba[..., 3].max() > 0.9 and rgba[0, 0, 3] == 0.0
    assert np.all(rgba[..., :3] <= rgba[..., 3:] + 1e-6)  # premultiplied
    neutral_path = METHODS["render_frame"]({**params, "curves": None, "cache": str(tmp_path / "c2")}, ctx)["path"]
    neutral = np.fromfile(neutral_path, np.float32).reshape(30, 40, 4)
    assert not np.array_equal(neutral, rgba)  # frame 3's expression differs from the neutral face
    again = METHODS["render_frame"](params, ctx)
    assert again["path"] == reply["path"]  # one buffer file, rewritten for every frame
    assert np.array_equal(np.fromfile(again["path"], np.float32).reshape(30, 40, 4), rgba)
    with pytest.raises(InputError, match="outside the curves"):
        METHODS["render_frame"]({**params, "frame": 99}, ctx)


def test_front_camera_frames_the_head_and_camera_files_are_checked(tmp_path):
    from emotalker.core.render.camera import Camera

    verts = tiny_rig(n_expr=6).v_template
    cam = front_camera(verts, 200, 100)
    cam_pts = verts @ cam.viewmat[:3, :3].T + cam.viewmat[:3, 3]
    assert (cam_pts[:, 2] > 0).all()  # in front of the camera
    uv = cam_pts @ cam.K.T
    uv = uv[:, :2] / uv[:, 2:]
    assert (uv[:, 0] > 0).all() and (uv[:, 0] < 200).all() and (uv[:, 1] > 0).all() and (uv[:, 1] < 100).all()
    assert uv[:, 1].max() - uv[:, 1].min() > 0.7 * 100  # the head fills most of the frame's height
    top = verts[:, 1].argmax()
    assert uv[top, 1] == uv[:, 1].min()  # FLAME's +Y is up in the image
    assert Camera.from_dict(cam.to_dict()).to_dict() == cam.to_dict()
    bad = {**cam.to_dict(), "viewmat": np.diag([2.0, 1, 1, 1]).tolist()}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(InputError, match="rotation"):
        Camera.load(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(json.dumps({**cam.to_dict(), "width": 0}))
    with pytest.raises(InputError, match="width"):
        Camera.load(tmp_path / "bad.json")


def test_camera_files_take_an_optional_orthographic_model(tmp_path):
    from emotalker.core.render.camera import Camera

    cam = front_camera(tiny_rig(n_expr=6).v_template, 64)
    assert "model" not in cam.to_dict() and cam.model == "pinhole"  # files written before "model" stay the same
    ortho = Camera.from_dict({**cam.to_dict(), "model": "ortho"})
    assert ortho.model == "ortho" and ortho.to_dict()["model"] == "ortho"
    assert Camera.from_dict(ortho.to_dict()).to_dict() == ortho.to_dict()
    (tmp_path / "bad.json").write_text(json.dumps({**cam.to_dict(), "model": "fisheye"}))
    with pytest.raises(InputError, match="bad.json.*camera model is 'fisheye'"):
        Camera.load(tmp_path / "bad.json")


def test_an_orthographic_camera_bakes_and_render_frame_takes_it(inputs, tmp_path):
    """The bake and the worker's render_frame render the same orthographic image, which is not the
    pinhole's: the model travels from the camera file and from render_frame's camera_model."""
    from PIL import Image

    from emotalker.worker.methods import METHODS
    from emotalker.worker.server import JobContext

    pinhole = front_camera(tiny_rig(n_expr=6).v_template, 40, 30).to_dict()
    distance = pinhole["viewmat"][2][3]
    K = np.array(pinhole["K"])
    K[:2, :2] /= distance  # the pinhole's pixels a metre at the head's distance
    ortho = {**pinhole, "K": K.tolist(), "model": "ortho"}
    (tmp_path / "ortho.json").write_text(json.dumps(ortho))
    result = bake_clip(ClipSpec(avatar=str(inputs / "avatar"), audio=str(inputs / "speech.wav"), out=str(tmp_path / "o"),
                                emotion="happy", png=True, camera=str(tmp_path / "ortho.json"), frames="1:2"), QUIET)
    assert json.loads(Path(result.outputs["camera"]).read_text())["model"] == "ortho"
    baked = np.asarray(Image.open(tmp_path / "o" / "speech_000002.png"))[..., 3] / 255.0

    params = {"avatar": str(inputs / "avatar"), "cache": str(tmp_path / "cache"), "frame": 2,
              "curves": result.outputs["flame_curves"], **{k: ortho[k] for k in ("viewmat", "K", "width", "height")}}
    ctx = JobContext(1, lambda event: None)
    alpha = {}
    for model in ("ortho", "pinhole"):
        reply = METHODS["render_frame"]({**params, "camera_model": model}, ctx)
        alpha[model] = np.fromfile(reply["path"], np.float32).reshape(30, 40, 4)[::-1, :, 3]  # top row first
    assert alpha["ortho"].max() > 0.9 and alpha["ortho"][0, 0] == 0.0
    assert np.abs(alpha["ortho"] - baked).max() <= 1 / 255 + 1e-6
    assert np.abs(alpha["pinhole"] - baked).mean() > 0.05  # a pinhole with focal lengths this short sees far less
    with pytest.raises(InputError, match="camera model"):
        METHODS["render_frame"]({**params, "camera_model": "fisheye"}, ctx)


def test_render_frame_loads_the_avatar_once_while_its_files_are_unchanged(tmp_path):
    from emotalker.worker import methods as worker_methods

    avatar = make_tiny_avatar(tmp_path / "avatar")
    cam = front_camera(FlameModel.load(avatar / "flame_model.npz").v_template, 32)
    params = {"avatar": str(avatar), "cache": str(tmp_path / "cache"), "viewmat": cam.viewmat.tolist(),
              "K": cam.K.tolist(), "width": 32, "height": 32, "no_emotion": True}
    worker_methods._cached_avatar.cache_clear()
    for frame in (1, 2):
        worker_methods.METHODS["render_frame"]({**params, "frame": frame}, None)
    info = worker_methods._cached_avatar.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    (avatar / "neutral.safetensors").touch()  # a retrained stage is picked up
    worker_methods.METHODS["render_frame"]({**params, "frame": 3}, None)
    assert worker_methods._cached_avatar.cache_info().misses == 2


def test_render_frame_reads_the_clips_curves_and_audio_once_with_the_same_pixels(tmp_path):
    from emotalker.bake.engine import FlameCurves
    from emotalker.core.audio.features import frame_audio_windows
    from emotalker.core.audio.waveform import load_audio
    from emotalker.core.models.bundle import AvatarBundle
    from emotalker.worker import methods as worker_methods

    avatar = make_tiny_avatar(tmp_path / "avatar", emotion=True)
    speech = make_speech(tmp_path / "speech.wav", seconds=0.6)
    baked = bake_clip(ClipSpec(avatar=str(avatar), audio=str(speech), out=str(tmp_path / "out"), emotion="happy",
                               ply=True))
    cam = front_camera(FlameModel.load(avatar / "flame_model.npz").v_template, 32)
    params = {"avatar": str(avatar), "cache": str(tmp_path / "cache"), "viewmat": cam.viewmat.tolist(),
              "K": cam.K.tolist(), "width": 32, "height": 32, "curves": baked.outputs["flame_curves"],
              "audio": str(speech)}
    worker_methods._cached_curves.cache_clear()
    worker_methods._cached_audio_windows.cache_clear()
    last = baked.frame_end
    for frame in (1, last // 2, last):
        worker_methods.METHODS["render_frame"]({**params, "frame": frame}, None)
    assert worker_methods._cached_curves.cache_info().misses == 1
    assert worker_methods._cached_audio_windows.cache_info().misses == 1

    # Every frame's cached window is the one computed for that frame alone (the bake's own way).
    features = worker_methods._avatar(AvatarBundle.open(avatar), True).audio_features
    fps = FlameCurves.load(params["curves"], FlameModel.load(avatar / "flame_model.npz").n_expr).fps
    samples = load_audio(speech)
    windows = worker_methods._cached_audio_windows(worker_methods._file_stamp(str(speech)), features, fps)
    for frame in (1, last // 2, last):
        alone = frame_audio_windows(samples, features, fps, np.array([frame - 1]), hold_ends=True)
        assert np.array_equal(windows(np.array([frame - 1])), alone)

    speech.touch()  # a re-recorded line is read again
    worker_methods.METHODS["render_frame"]({**params, "frame": 1}, None)
    assert worker_methods._cached_audio_windows.cache_info().misses == 2


def test_avatar_cache_loads_an_avatar_once_and_again_when_it_changes(tmp_path):
    import os
    import shutil

    from emotalker.bake.clip import AvatarCache
    from emotalker.core.models.bundle import AvatarBundle

    demo = Path(__file__).resolve().parents[1] / "emotalker" / "data" / "demo_avatar"
    shutil.copytree(demo, tmp_path / "avatar")
    bundle = AvatarBundle.open(tmp_path / "avatar")
    cache = AvatarCache()
    first = cache.open(bundle, "cpu", True, None)
    assert cache.open(bundle, "cpu", True, None) is first and cache.loads == 1
    assert cache.open(bundle, "cpu", False, None) is not first and cache.loads == 2  # other options: another
    neutral = bundle.stage_path("neutral")
    os.utime(neutral, ns=(0, os.stat(neutral).st_mtime_ns + 1))  # retrained: loaded afresh
    assert cache.open(bundle, "cpu", True, None) is not first and cache.loads == 3
    assert AvatarCache(0).open(bundle, "cpu", True, None) is not AvatarCache(0).open(bundle, "cpu", True, None)
