"""The Blender add-on, headless through bpy (the `blender` extra)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
pytestmark = pytest.mark.blender

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import blender_addon  # noqa: E402
from blender_addon import camera  # noqa: E402
from conftest import make_toy_rig  # noqa: E402
from emotalker.core.models.bundle import AvatarBundle  # noqa: E402


@pytest.fixture
def addon(monkeypatch, tmp_path):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    monkeypatch.setenv("EMOTALKER_ENV", sys.prefix)
    blender_addon.register()
    yield blender_addon
    blender_addon.unregister()


@pytest.fixture
def toy_bundle(tmp_path) -> Path:
    bundle = AvatarBundle.create(tmp_path / "avatar")
    rig = make_toy_rig()
    rig.expr_names = [f"e{i}" for i in range(rig.n_expr)]
    rig.save(bundle.flame_path)
    return bundle.root


def test_register_and_unregister_cleanly():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    for _ in range(2):
        blender_addon.register()
        assert hasattr(bpy.types.Object, "emotalker")
        assert hasattr(bpy.ops.emotalker, "import_avatar")
        blender_addon.unregister()
        assert not hasattr(bpy.types.Object, "emotalker")


def test_import_avatar_makes_rig_mesh_and_animatable_properties(addon, toy_bundle):
    assert bpy.ops.emotalker.import_avatar(directory=str(toy_bundle), name="Ava") == {"FINISHED"}
    avatar = bpy.data.objects["Ava"]
    proxy = bpy.data.objects["Ava_proxy"]
    assert avatar.type == "ARMATURE" and avatar.emotalker.is_avatar and proxy.parent == avatar
    assert [b.name for b in avatar.data.bones] == ["root", "neck", "jaw", "eye_left", "eye_right"]
    rig = make_toy_rig()
    assert len(proxy.data.vertices) == rig.n_verts
    assert [k.name for k in proxy.data.shape_keys.key_blocks] == ["Basis"] + [f"e{i}" for i in range(rig.n_expr)]
    key = np.zeros(rig.n_verts * 3, np.float32)
    proxy.data.shape_keys.key_blocks["e2"].data.foreach_get("co", key)
    assert np.allclose(key.reshape(-1, 3), rig.v_template + rig.shapedirs[:, :, rig.n_shape + 2], atol=1e-6)
    # Emotion weights and intensity key like any property.
    avatar.emotalker.happy = 0.0
    avatar.keyframe_insert("emotalker.happy", frame=1)
    avatar.emotalker.happy = 1.0
    avatar.keyframe_insert("emotalker.happy", frame=20)
    avatar.emotalker.intensity = 2.5
    avatar.keyframe_insert("emotalker.intensity", frame=20)
    bpy.context.scene.frame_set(10)
    assert 0.0 < avatar.emotalker.happy < 1.0


def test_import_of_a_folder_that_is_no_avatar_reports_an_error(addon, tmp_path):
    with pytest.raises(RuntimeError, match="avatar"):
        bpy.ops.emotalker.import_avatar(directory=str(tmp_path), name="X")


def test_legacy_bl_info_agrees_with_the_extension_manifest():
    import tomllib

    manifest = tomllib.loads((ROOT / "blender_addon" / "blender_manifest.toml").read_text(encoding="utf-8"))
    info = blender_addon.bl_info
    assert info["name"] == manifest["name"]
    assert ".".join(map(str, info["version"])) == manifest["version"]
    assert info["blender"] == (3, 4, 0)  # legacy add-on for Blenders older than the manifest's 4.2


def test_compat_fcurves_are_made_once_and_found_and_strips_listed_inside_metas():
    from blender_addon import compat

    bpy.ops.wm.read_factory_settings(use_empty=True)
    obj = bpy.data.objects.new("Animated", None)
    bpy.context.scene.collection.objects.link(obj)
    obj.animation_data_create()
    action = obj.animation_data.action = bpy.data.actions.new("Animated_action")
    assert compat.fcurve_find(action, "location", 1) is None
    fc = compat.fcurve_ensure(action, obj, "location", index=1)
    fc.keyframe_points.insert(1.0, 2.5)
    assert (fc.data_path, fc.array_index) == ("location", 1)
    assert compat.fcurve_ensure(action, obj, "location", index=1) == fc
    assert compat.fcurve_find(action, "location", 1) == fc
    assert compat.fcurve_find(action, "location", 0) is None
    bpy.context.scene.frame_set(1)
    assert abs(obj.location[1] - 2.5) < 1e-6  # the F-curve animates the object it was made for
    scene = bpy.context.scene
    assert compat.sequencer_strips(scene) == ()
    editor = scene.sequence_editor_create()
    strips = editor.strips if compat.SEQUENCER_STRIPS else editor.sequences
    meta = strips.new_meta("group", channel=2, frame_start=1)
    strips.new_image("plain", str(ROOT / "missing.png"), channel=1, frame_start=1)  # the same call in 4.2-5.x
    inner = meta.strips if compat.SEQUENCER_STRIPS else meta.sequences
    inner.new_image("inner", str(ROOT / "missing.png"), channel=1, frame_start=1)
    # strips inside meta strips count too
    assert {strip.name for strip in compat.sequencer_strips(scene)} == {"group", "plain", "inner"}


def test_camera_conversion_matches_blenders_projection():
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    scene, cam, avatar = camera_scene("PERSP")
    V, K, W, H = camera.scene_camera(scene, cam, avatar)
    rng = np.random.default_rng(0)
    for p in rng.normal(scale=0.05, size=(10, 3)):
        world = avatar.matrix_world @ Vector(p.tolist())
        ndc = world_to_camera_view(scene, cam, world)  # x, y in 0..1 from bottom-left; z depth
        cam_pt = V @ np.append(p, 1.0)
        uv = K @ cam_pt[:3]
        u, v = uv[0] / uv[2], uv[1] / uv[2]
        assert abs(u - ndc.x * W) < 1e-3 and abs(v - (1 - ndc.y) * H) < 1e-3
        assert abs(cam_pt[2] - ndc.z) < 1e-5


def camera_scene(kind: str, sensor_fit: str = "AUTO"):
    """An empty scene 320x240 with a camera of `kind` (PERSP or ORTHO) looking at an avatar object placed as
    the add-on places one (FLAME_TO_BLENDER, moved a little)."""
    from mathutils import Matrix

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 320, 240, 100
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    scene.collection.objects.link(cam)
    cam.data.type, cam.data.sensor_fit = kind, sensor_fit
    cam.data.lens, cam.data.ortho_scale, cam.data.shift_x, cam.data.shift_y = 70.0, 0.4, 0.05, -0.03
    cam.location = (0.1, -0.6, 0.05)
    cam.rotation_euler = (np.radians(88), 0.0, np.radians(8))
    avatar = bpy.data.objects.new("avatar", None)
    scene.collection.objects.link(avatar)
    avatar.matrix_world = Matrix(camera.FLAME_TO_BLENDER.tolist()) @ Matrix.Translation((0.01, 0.0, 0.02))
    bpy.context.view_layer.update()
    return scene, cam, avatar


def project(V, K, model, p):
    """Pixel (u, v) and camera z of the FLAME-space point p through viewmat V, intrinsics K and the model."""
    x, y, z = (V @ np.append(p, 1.0))[:3]
    if model == "pinhole":
        x, y = x / z, y / z
    return K[0, 0] * x + K[0, 2], K[1, 1] * y + K[1, 2], z


@pytest.mark.parametrize("sensor_fit", ["AUTO", "VERTICAL"])
def test_orthographic_scene_camera_matches_blenders_projection(sensor_fit):
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    assert camera.model(camera_scene("PERSP")[1]) == "pinhole"
    scene, cam, avatar = camera_scene("ORTHO", sensor_fit)
    V, K, W, H = camera.scene_camera(scene, cam, avatar)
    assert camera.model(cam) == "ortho"
    for p in np.random.default_rng(0).normal(scale=0.05, size=(10, 3)):
        ndc = world_to_camera_view(scene, cam, avatar.matrix_world @ Vector(p.tolist()))
        u, v, z = project(V, K, "ortho", p)
        assert abs(u - ndc.x * W) < 1e-3 and abs(v - (1 - ndc.y) * H) < 1e-3
        assert abs(z - ndc.z) < 1e-5


@pytest.mark.parametrize("kind", ["PERSP", "ORTHO"])
def test_render_mp4_camera_file_says_orthographic_only_for_an_orthographic_camera(kind, tmp_path):
    import json

    from blender_addon.ops_bake import write_camera_file
    from emotalker.core.render.camera import Camera

    scene, cam, avatar = camera_scene(kind)
    scene.camera = cam
    path = Path(write_camera_file(bpy.context, avatar, tmp_path / "camera.json"))
    loaded = Camera.load(path)
    assert ("model" in json.loads(path.read_text())) == (kind == "ORTHO")  # a pinhole's file is as before
    assert loaded.model == camera.model(cam)
    np.testing.assert_allclose(loaded.K, camera.scene_camera(scene, cam, avatar)[1])


@pytest.mark.parametrize("kind", ["PERSP", "ORTHO"])
def test_viewport_camera_from_blenders_own_matrices(kind):
    """A viewport's camera from the window and view matrices Blender draws it with (here a camera's own,
    as a viewport looking through it has): points land where Blender projects them; an orthographic view
    becomes the orthographic camera, stepped back so that what lies behind its view point stays in front."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    scene, cam, avatar = camera_scene(kind)
    W, H = 320, 240
    window = np.array(cam.calc_matrix_camera(bpy.context.evaluated_depsgraph_get(), x=W, y=H))
    view, K, model = camera.viewport_camera(W, H, window, np.array(cam.matrix_world.inverted()), kind == "PERSP",
                                            1000.0)
    assert model == {"PERSP": "pinhole", "ORTHO": "ortho"}[kind]
    V = view @ np.array(avatar.matrix_world)
    for p in np.random.default_rng(1).normal(scale=0.05, size=(10, 3)):
        ndc = world_to_camera_view(scene, cam, avatar.matrix_world @ Vector(p.tolist()))
        u, v, z = project(V, K, model, p)
        assert abs(u - ndc.x * W) < 1e-3 and abs(v - (1 - ndc.y) * H) < 1e-3
        assert abs(z - ndc.z - (500.0 if kind == "ORTHO" else 0.0)) < 1e-4
    assert camera.layer_distance(V, model) == pytest.approx(
        (V[2, 3] if kind == "ORTHO" else np.linalg.norm(V[:3, 3])))


# --- Bake, render and export through the worker, on a tiny avatar built in the test -----------------

from bake_fixture import core_blender_pixels, make_speech, make_tiny_avatar  # noqa: E402


@pytest.fixture
def baked_scene(addon, tmp_path):
    """A tiny avatar imported, with keyed emotion tracks and audio, in a scene of 10 frames."""
    avatar_dir = make_tiny_avatar(tmp_path / "avatar", emotion=True)
    audio = make_speech(tmp_path / "line.wav", seconds=0.6)
    assert bpy.ops.emotalker.import_avatar(directory=str(avatar_dir), name="Ava") == {"FINISHED"}
    avatar = bpy.data.objects["Ava"]
    props = avatar.emotalker
    props.audio_path = str(audio)
    props.cache_dir = str(tmp_path / "cache")
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end, scene.render.fps = 1, 10, 25
    props.neutral, props.happy = 1.0, 0.0
    avatar.keyframe_insert("emotalker.happy", frame=1)
    avatar.keyframe_insert("emotalker.neutral", frame=1)
    props.neutral, props.happy = 0.0, 1.0
    avatar.keyframe_insert("emotalker.happy", frame=10)
    avatar.keyframe_insert("emotalker.neutral", frame=10)
    props.intensity = 0.5
    avatar.keyframe_insert("emotalker.intensity", frame=1)
    props.intensity = 3.0
    avatar.keyframe_insert("emotalker.intensity", frame=10)
    bpy.context.view_layer.objects.active = avatar
    return avatar, tmp_path


def test_bake_operator_creates_fcurves_and_cache_driven_by_the_keys(baked_scene):
    avatar, tmp_path = baked_scene
    assert bpy.ops.emotalker.bake() == {"FINISHED"}
    cache = tmp_path / "cache" / "Ava" / "bake"
    assert sorted(p.name for p in cache.glob("bake_*.ply")) == [f"bake_{f:06d}.ply" for f in range(1, 11)]
    with np.load(cache / "bake_flame.npz") as curves:
        assert int(curves["frame_start"]) == 1
        happy = curves["emotion_weights"][:10, 5]
        intensity = curves["intensity"][:10]
    # The keyed tracks reached the worker as Blender evaluates them (default Bezier easing).
    from blender_addon.curves import sample_property
    frames = np.arange(1, 11)
    expected_happy = sample_property(avatar, "happy", frames)
    assert 0 < expected_happy[4] < 1 and not np.allclose(expected_happy, np.linspace(0, 1, 10), atol=1e-3)
    assert np.allclose(happy, expected_happy, atol=1e-5)
    assert np.allclose(intensity, sample_property(avatar, "intensity", frames), atol=1e-5)
    proxy = bpy.data.objects["Ava_proxy"]
    key_action = proxy.data.shape_keys.animation_data.action
    from blender_addon import compat
    if compat.SLOTTED_ACTIONS:
        assert len(key_action.slots) == 1
    fc = compat.fcurve_find(key_action, 'key_blocks["expr_000"].value')  # the tiny rig names no components
    with np.load(cache / "bake_flame.npz") as curves:
        assert fc is not None and len(fc.keyframe_points) == len(curves["expr"])
        assert abs(fc.evaluate(4.0) - curves["expr"][3, 0]) < 1e-5
        jaw = curves["jaw"]
    # The jaw bone's Euler keys reproduce the curves' axis-angle rotation.
    bpy.context.scene.frame_set(7)
    R_bone = np.array(avatar.pose.bones["jaw"].matrix_basis)[:3, :3]
    from blender_addon.curves import _rodrigues
    assert np.allclose(R_bone, _rodrigues(jaw[6:7].astype(np.float64))[0], atol=1e-5)


def test_rebake_follows_an_edited_fcurve(baked_scene):
    from blender_addon import compat

    avatar, tmp_path = baked_scene
    assert bpy.ops.emotalker.bake() == {"FINISHED"}
    cache = tmp_path / "cache" / "Ava" / "bake"
    key_action = bpy.data.objects["Ava_proxy"].data.shape_keys.animation_data.action
    fc = compat.fcurve_find(key_action, 'key_blocks["expr_000"].value')
    fc.keyframe_points[3].co.y += 0.5  # frame 4
    fc.update()
    assert bpy.ops.emotalker.rebake() == {"FINISHED"}
    with np.load(cache / "bake_flame.npz") as baked, np.load(tmp_path / "cache" / "Ava" / "edited_flame.npz") as edited:
        expected = baked["expr"][:, 0].copy()
        expected[3] += 0.5
        assert np.allclose(edited["expr"][:, 0], expected, atol=1e-5)
        assert np.allclose(edited["jaw"], baked["jaw"], atol=1e-5)  # unedited bones read back as baked
    rebaked = cache / "rebake"
    assert sorted(p.name for p in rebaked.glob("bake_*.ply")) == [f"bake_{f:06d}.ply" for f in range(1, 11)]
    assert (rebaked / "bake_000004.ply").read_bytes() != (cache / "bake_000004.ply").read_bytes()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


@pytest.mark.parametrize("kind", ["PERSP", "ORTHO"])
def test_f12_render_matches_the_cores_own_render(baked_scene, kind):
    avatar, tmp_path = baked_scene
    assert bpy.ops.emotalker.bake() == {"FINISHED"}
    scene = bpy.context.scene
    scene.render.engine = "EMOTALKER_SPLATS"
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 96, 80, 100
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    cam.data.lens, cam.data.type, cam.data.ortho_scale = 50, kind, 0.3
    cam.location = (0.02, -0.45, 0.01)
    cam.rotation_euler = (np.radians(90), 0, np.radians(3))
    scene.frame_set(6)
    scene.render.image_settings.file_format = "OPEN_EXR"
    scene.render.filepath = str(tmp_path / "f12.exr")
    bpy.ops.render.render(write_still=True)
    img = bpy.data.images.load(str(tmp_path / "f12.exr"))
    blender = np.array(img.pixels[:], dtype=np.float32).reshape(80, 96, 4)[::-1]  # premultiplied, bottom row first

    # The core's own render of the same frame from the same camera, through the bake engine.
    V, K, W, H = camera.scene_camera(scene, cam, avatar)
    core = core_blender_pixels(tmp_path / "avatar", tmp_path / "cache" / "Ava" / "bake" / "bake_flame.npz",
                               Path(avatar.emotalker.audio_path), 6, V, K, W, H, camera.model(cam))
    alpha = core[..., 3]
    assert alpha.max() > 0.5, "the avatar should be in view"
    value = psnr(blender, core)
    print(f"F12 through the engine vs the core's render: PSNR {value:.1f} dB")
    assert value >= 40.0


def test_export_operator_writes_a_valid_ply_sequence(baked_scene):
    from emotalker.bake.ply import read_ply

    avatar, tmp_path = baked_scene
    assert bpy.ops.emotalker.bake() == {"FINISHED"}
    avatar.emotalker.sh_degree = "0"
    out = tmp_path / "export"
    assert bpy.ops.emotalker.export_ply(directory=str(out)) == {"FINISHED"}
    frames = sorted(out.glob("Ava_*.ply"))
    assert len(frames) == 10
    sidecar = __import__("json").loads((out / "Ava.json").read_text())
    assert sidecar["format"] == "emotalker-plyseq/1" and sidecar["sh_degree"] == 0 and sidecar["up_axis"] == "z"
    assert (sidecar["frame_start"], sidecar["frame_end"]) == (1, 10)
    read = [read_ply(f) for f in frames]
    assert {r.rows.shape for r in read} == {(sidecar["count"], 17)}  # x y z, normals, 3 DC, opacity, 3 scales, 4 rot
    assert read[0].names[:3] == ["x", "y", "z"] and read[0].names[-4:] == ["rot_0", "rot_1", "rot_2", "rot_3"]
    # The edited curves the add-on hands back keep the FLAME-curves format's stamp.
    from emotalker.bake.engine import CURVES_FORMAT

    with np.load(tmp_path / "cache" / "Ava" / "edited_flame.npz") as edited:
        assert str(edited["format"]) == CURVES_FORMAT


def test_export_operator_offers_unity_spz_compressed_ply_and_usd(baked_scene):
    from emotalker.bake.ply import ply_property_names, read_ply

    avatar, tmp_path = baked_scene
    assert bpy.ops.emotalker.bake() == {"FINISHED"}
    avatar.emotalker.sh_degree, avatar.emotalker.up_axis = "0", "Z"  # the Unity preset overrides both
    expected = {"UNITY": ("Ava_{:06d}.ply", "Ava.json", "emotalker-plyseq/1", 3, "y"),
                "SPZ": ("Ava_{:06d}.spz", "Ava.spz.json", "emotalker-spzseq/1", 0, "z"),
                "COMPRESSED_PLY": ("Ava_{:06d}.compressed.ply", "Ava.compressed-ply.json",
                                   "emotalker-compressed-plyseq/1", 0, "z")}
    for fmt, (pattern, sidecar_name, sidecar_format, degree, up) in expected.items():
        avatar.emotalker.export_format = fmt
        out = tmp_path / f"export_{fmt.lower()}"
        assert bpy.ops.emotalker.export_ply(directory=str(out)) == {"FINISHED"}
        assert sorted(p.name for p in out.glob("Ava_0*")) == [pattern.format(i) for i in range(1, 11)]
        sidecar = __import__("json").loads((out / sidecar_name).read_text())
        assert (sidecar["format"], sidecar["sh_degree"], sidecar["up_axis"]) == (sidecar_format, degree, up)
    assert read_ply(tmp_path / "export_unity" / "Ava_000001.ply").names == ply_property_names(3)
    try:
        from pxr import Usd, UsdGeom
    except ImportError:
        return  # the USD format needs usd-core in the worker's Python (tests/test_usd.py says so when it skips)
    avatar.emotalker.export_format = "USD"
    out = tmp_path / "export_usd"
    assert bpy.ops.emotalker.export_ply(directory=str(out)) == {"FINISHED"}
    stage = Usd.Stage.Open(str(out / "Ava.usdc"))
    assert (stage.GetStartTimeCode(), stage.GetEndTimeCode(), UsdGeom.GetStageUpAxis(stage)) == (1, 10, "Y")
    assert sorted(p.name for p in (out / "Ava.usd-frames").iterdir()) == [f"Ava_{i:06d}.npz" for i in range(1, 11)]
    assert stage.GetPrimAtPath("/Ava/Splats").GetAttribute("radiance:sphericalHarmonicsDegree").Get() == 0


def test_cancelling_a_bake_leaves_only_whole_frames(baked_scene):
    from blender_addon.bake_job import BakeJob

    avatar, tmp_path = baked_scene
    bpy.context.scene.frame_end = 15
    out = tmp_path / "cancelled"
    job = BakeJob(bpy.context, avatar, out, run={"chunk": 1})
    # The add-on's plain dict is what the worker's schema reads.
    from emotalker.core.base.config import from_dict
    from emotalker.worker.methods import BakeParams

    params = from_dict(BakeParams, job.params, "the add-on's bake params")
    assert (params.clip.name, params.clip.ply, params.run.chunk) == ("bake", True, 1)
    job.start()
    for _ in range(2000):
        job.poll()
        if job.fraction > 0 or job.done:
            break
        __import__("time").sleep(0.01)
    job.cancel()
    job.wait(timeout=120)
    assert job.error_kind == "cancelled", job.error
    written = sorted(out.glob("bake_*.ply"))
    assert 0 < len(written) < 15
    assert not list(out.glob("*.part")) and not list(out.glob(".*.part"))
    from plyfile import PlyData
    for f in written:
        assert len(PlyData.read(str(f))["vertex"]) > 0


def test_audio_comes_from_a_sound_strip_when_no_file_is_set(baked_scene):
    from blender_addon import compat
    from blender_addon.bake_job import audio_source

    avatar, tmp_path = baked_scene
    audio = avatar.emotalker.audio_path
    avatar.emotalker.audio_path = ""
    scene = bpy.context.scene
    assert audio_source(bpy.context, avatar.emotalker) == ""
    editor = scene.sequence_editor_create()
    strips = editor.strips if compat.SEQUENCER_STRIPS else editor.sequences  # renamed in Blender 4.4
    try:
        strips.new_sound("line", audio, channel=1, frame_start=1)
    except RuntimeError as exc:  # the bpy 4.2 wheel is built without audio; Blender 4.2 itself has it
        if "Audaspace" not in str(exc):
            raise
        pytest.skip(f"this bpy cannot make sound strips: {exc}")
    assert audio_source(bpy.context, avatar.emotalker) == audio
    assert bpy.ops.emotalker.bake() == {"FINISHED"}
    assert (tmp_path / "cache" / "Ava" / "bake" / "bake_000010.ply").exists()


# --- Training from Blender ---------------------------------------------------------------------------


def test_train_job_shows_the_stage_its_step_and_the_held_out_psnr_of_stages_done():
    from blender_addon.ops_train import TrainJob

    job = TrainJob(client=None, dataset="/d", avatar="/a", steps={"neutral": 40}, gaussians=500)
    assert job.params["config"] == {"neutral": {"steps": 40, "model": {"n_gaussians": 500}}}
    assert job.paths == (("/d",), ("/a",))
    job.on_progress({"stage": "train neutral", "step": 10, "total": 40, "psnr": 21.234})
    assert job.message == "Stage 1 (1 of 3) step 10/40, PSNR 21.2 dB" and job.fraction == pytest.approx(0.25 / 3)
    job.on_progress({"stage": "train neutral", "finished": True, "summary": "Stage 1: ...", "held_out_psnr": 31.5})
    job.on_progress({"stage": "train a2e", "finished": True, "summary": "A2E: ...", "held_out_psnr": None})
    job.on_progress({"stage": "train emotion", "step": 1, "total": 2, "psnr": 30.0})
    assert job.message == "Stage 2 (3 of 3) step 1/2, PSNR 30.0 dB; held-out PSNR: Stage 1 31.50 dB"
    assert job.fraction == pytest.approx(2.5 / 3) and job.summaries == ["Stage 1: ...", "A2E: ..."]
    job.on_progress({"stage": "report", "step": 0, "total": 1})
    assert job.message == "writing the avatar report; held-out PSNR: Stage 1 31.50 dB"
    one = TrainJob(client=None, dataset="/d", avatar="/a", stage="emotion")
    one.on_progress({"stage": "train emotion", "step": 1, "total": 4})
    assert one.message == "Stage 2 (1 of 1) step 1/4" and one.fraction == 0.25


def test_train_job_shows_the_plan_before_the_first_step_and_sends_a_time_budget():
    from blender_addon.ops_train import TrainJob

    job = TrainJob(client=None, dataset="/d", avatar="/a", minutes=12.0)
    assert job.params["config"] == {"minutes": 12.0}
    job.on_progress({"stage": "plan", "lines": ["plan (cpu, a budget of 12 min; probed in 20 s):", "..."],
                     "estimate_minutes": 12.0, "stages": [{"stage": "neutral", "steps": 4000},
                                                          {"stage": "a2e", "steps": 900},
                                                          {"stage": "emotion", "steps": 700}]})
    assert job.message == "planned: Stage 1 4000 steps, A2E 900 steps, Stage 2 700 steps; about 12 min planned"
    assert job.plan[0].startswith("plan (cpu")  # reported in the info log when the job ends
    job.on_progress({"stage": "train neutral", "step": 10, "total": 4000})
    assert job.message == "Stage 1 (1 of 3) step 10/4000; about 12 min planned"
    one = TrainJob(client=None, dataset="/d", avatar="/a", stage="emotion", minutes=3.0)
    assert one.params["config"] == {"emotion": {"minutes": 3.0}}


def test_train_operator_trains_every_stage_and_imports_the_avatar(addon, tmp_path):
    from emotion_fixture import make_emotion_dataset

    dataset, _ = make_emotion_dataset(tmp_path / "data")
    out = tmp_path / "trained"
    assert bpy.ops.emotalker.train_avatar(dataset=str(dataset), directory=str(out), neutral_steps=3, a2e_steps=2,
                                          emotion_steps=2, name="Trained") == {"FINISHED"}
    bundle = AvatarBundle.open(out)
    assert all(bundle.has_stage(s) for s in ("neutral", "a2e", "emotion"))
    assert bundle.manifest()["stages"]["neutral"]["steps"] == 3
    avatar = bpy.data.objects["Trained"]
    assert Path(avatar.emotalker.avatar_path) == out
    assert (out / "report.html").is_file()  # the avatar report, as `train all` writes it


def test_train_operator_reports_a_folder_that_is_no_dataset(addon, tmp_path):
    with pytest.raises(RuntimeError, match="dataset.json"):
        bpy.ops.emotalker.train_avatar(dataset=str(tmp_path), directory=str(tmp_path / "out"), neutral_steps=1)
