"""Bake, re-bake and export operators: each runs one BakeJob in the worker (a JobOperator, blender_addon/job.py)."""

from __future__ import annotations

import json
from pathlib import Path

import bpy
import numpy as np
from bpy.props import StringProperty

from . import camera as camera_conv
from .avatar_objects import find_avatar, proxy_mesh
from .bake_job import BakeJob, apply_bake, audio_source, bake_dir, curves_path
from .curves import read_curves
from .job import JobOperator
from .operators import cache_dir


def expression_names(avatar) -> list[str]:
    return [k.name for k in proxy_mesh(avatar).data.shape_keys.key_blocks[1:]]


class _BakeOperator(JobOperator):
    """Jobs that bake the selected avatar: it needs an avatar bundle and audio."""

    @classmethod
    def poll(cls, context):
        avatar = find_avatar(context)
        return avatar is not None and bool(avatar.emotalker.avatar_path) and bool(audio_source(context, avatar.emotalker))

    def cancelled_message(self) -> str:
        return "cancelled; finished frames are kept"


class EMOTALKER_OT_bake(_BakeOperator, bpy.types.Operator):
    """Bake the audio and the keyed emotion tracks into FLAME F-curves and per-frame Gaussians"""

    bl_idname = "emotalker.bake"
    bl_label = "Bake EmoTalker Avatar"

    def make_job(self, context):
        avatar = find_avatar(context)
        return BakeJob(context, avatar, bake_dir(cache_dir(avatar.emotalker, avatar.name)), run={"overwrite": True})

    def finished(self, context, result):
        avatar = find_avatar(context)
        n = apply_bake(avatar, expression_names(avatar), cache_dir(avatar.emotalker, avatar.name))
        self.report({"INFO"}, f"baked frames {result['frame_start']}-{result['frame_end']}: {n} F-curves")


def edited_curves_file(avatar) -> str:
    """The proxy's (possibly edited) F-curves written as a FLAME curves file for a re-bake or export."""
    cache = cache_dir(avatar.emotalker, avatar.name)
    with np.load(curves_path(cache), allow_pickle=False) as npz:
        base = {k: npz[k] for k in npz.files}
    curves = read_curves(avatar, proxy_mesh(avatar), base, expression_names(avatar))
    path = cache / "edited_flame.npz"
    with open(path, "wb") as fh:
        np.savez(fh, **curves)
    return str(path)


class _BakedJobOperator(_BakeOperator):
    """Jobs that start from a finished bake's curves."""

    @classmethod
    def poll(cls, context):
        return super().poll(context) and find_avatar(context).emotalker.baked


class _ExportOperator(_BakedJobOperator):
    """Exports ask for a folder first, then run like every job (modal in the UI)."""

    directory: StringProperty(subtype="DIR_PATH")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}


class EMOTALKER_OT_rebake(_BakedJobOperator, bpy.types.Operator):
    """Re-bake the per-frame Gaussians from the edited F-curves (A2E is not run again)"""

    bl_idname = "emotalker.rebake"
    bl_label = "Re-bake from Curves"

    def make_job(self, context):
        avatar = find_avatar(context)
        cache = cache_dir(avatar.emotalker, avatar.name)
        return BakeJob(context, avatar, bake_dir(cache) / "rebake", flame_curves=edited_curves_file(avatar),
                       run={"overwrite": True})

    def finished(self, context, result):
        self.report({"INFO"}, f"re-baked {result['written']} frames from the edited curves")


def export_clip_fields(props) -> dict:
    """The ClipSpec fields of the avatar's export format (properties.EXPORT_FORMATS) and settings."""
    settings = {"sh_degree": int(props.sh_degree), "up_axis": props.up_axis.lower()}
    return {"PLY": {"ply": True, **settings}, "UNITY": {"preset": "unity"},
            "SPZ": {"spz": True, **settings}, "COMPRESSED_PLY": {"compressed_ply": True, **settings},
            # USD states its own axis (Y up, as FLAME): the up-axis setting does not apply.
            "USD": {"usd": True, "sh_degree": settings["sh_degree"]}}[props.export_format]


class EMOTALKER_OT_export_ply(_ExportOperator, bpy.types.Operator):
    """Export the baked avatar as a numbered splat sequence (PLY, Unity PLY, SPZ or compressed PLY) with a JSON sidecar,
    or as one OpenUSD file with the rig and the audio"""

    bl_idname = "emotalker.export_ply"
    bl_label = "Export Splat Sequence"

    def make_job(self, context):
        avatar = find_avatar(context)
        return BakeJob(context, avatar, Path(bpy.path.abspath(self.directory)), exports=(),
                       flame_curves=edited_curves_file(avatar),
                       clip={**export_clip_fields(avatar.emotalker), "name": avatar.name})

    def finished(self, context, result):
        avatar = find_avatar(context)
        n = result["frame_end"] - result["frame_start"] + 1
        if "usd" in result["outputs"]:
            self.report({"INFO"}, f"wrote {n} frames to {result['outputs']['usd']}")
            return
        self.report({"INFO"}, f"wrote {n} {avatar.emotalker.export_format.replace('_', ' ').lower()} frames to "
                              f"{result['out']}")


def write_camera_file(context, avatar, path: Path) -> str:
    viewmat, K, width, height = camera_conv.scene_camera(context.scene, context.scene.camera, avatar)
    camera = {"format": "emotalker-camera/1", "viewmat": viewmat.tolist(), "K": K.tolist(), "width": width,
              "height": height}
    if camera_conv.model(context.scene.camera) == "ortho":
        camera["model"] = "ortho"
    path.write_text(json.dumps(camera))
    return str(path)


class EMOTALKER_OT_render_mp4(_ExportOperator, bpy.types.Operator):
    """Render the baked avatar from the scene camera to PNG frames and an MP4 with the audio"""

    bl_idname = "emotalker.render_mp4"
    bl_label = "Render MP4"

    @classmethod
    def poll(cls, context):
        return super().poll(context) and context.scene.camera is not None

    def make_job(self, context):
        avatar = find_avatar(context)
        out = Path(bpy.path.abspath(self.directory))
        out.mkdir(parents=True, exist_ok=True)
        camera = write_camera_file(context, avatar, out / "camera.json")
        return BakeJob(context, avatar, out, exports=("png", "mp4"), flame_curves=edited_curves_file(avatar),
                       camera=camera, clip={"name": avatar.name})

    def finished(self, context, result):
        self.report({"INFO"}, f"wrote {result['outputs'].get('mp4', result['out'])}")


CLASSES = (EMOTALKER_OT_bake, EMOTALKER_OT_rebake, EMOTALKER_OT_export_ply, EMOTALKER_OT_render_mp4)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
