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
from emotalker.core.bundle import AvatarBundle  # noqa: E402


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


def test_camera_conversion_matches_blenders_projection():
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Matrix, Vector

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 320, 240, 100
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    scene.collection.objects.link(cam)
    cam.data.lens, cam.data.shift_x, cam.data.shift_y = 70.0, 0.05, -0.03
    cam.location = (0.1, -0.6, 0.05)
    cam.rotation_euler = (np.radians(88), 0.0, np.radians(8))
    avatar = bpy.data.objects.new("avatar", None)
    scene.collection.objects.link(avatar)
    avatar.matrix_world = Matrix(camera.FLAME_TO_BLENDER.tolist()) @ Matrix.Translation((0.01, 0.0, 0.02))
    bpy.context.view_layer.update()

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
