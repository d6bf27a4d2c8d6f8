"""Operators that need no bake: environment check and avatar import."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import bpy
import numpy as np
from bpy.props import StringProperty

from . import session
from .avatar_objects import build_avatar
from .worker_client import WorkerError


def cache_dir(avatar_props, name: str) -> Path:
    """The folder for this avatar's worker files: the property (relative to the .blend) or a temp folder."""
    base = avatar_props.cache_dir if avatar_props else "//emotalker_cache"
    if base.startswith("//") and not bpy.data.filepath:
        base = os.path.join(tempfile.gettempdir(), "emotalker_cache")
    path = Path(bpy.path.abspath(base)) / bpy.path.clean_name(name)
    path.mkdir(parents=True, exist_ok=True)
    return path


class EMOTALKER_OT_check_environment(bpy.types.Operator):
    """Start the core worker and report its versions and devices"""

    bl_idname = "emotalker.check_environment"
    bl_label = "Check EmoTalker Environment"

    def execute(self, context):
        try:
            env = session.worker(context).call("environment", timeout=120)
        except WorkerError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"EmoTalker {env['emotalker']}, torch {env['torch']}, devices: {', '.join(env['devices'])}")
        return {"FINISHED"}


class EMOTALKER_OT_import_avatar(bpy.types.Operator):
    """Import an EmoTalker avatar bundle as an animatable rig with a proxy mesh"""

    bl_idname = "emotalker.import_avatar"
    bl_label = "Import EmoTalker Avatar"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(subtype="DIR_PATH")
    name: StringProperty(name="Name", default="Avatar")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        avatar_path = bpy.path.abspath(self.directory)
        try:
            out = cache_dir(None, self.name)
            info = session.worker(context).call("avatar_proxy", {"avatar": avatar_path, "out": str(out)}, timeout=300,
                                                read=[avatar_path], write=[out])
        except WorkerError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        with np.load(info["proxy"], allow_pickle=False) as npz:
            proxy = {k: npz[k] for k in npz.files}
        if context.object is not None and context.object.mode != "OBJECT":
            bpy.ops.object.mode_set(mode="OBJECT")
        avatar = build_avatar(context, self.name, proxy, info["expr_names"])
        avatar.emotalker.avatar_path = avatar_path
        context.scene.render.fps = int(info.get("fps", 25))
        self.report({"INFO"}, f"imported {avatar.name}: stages {', '.join(info['stages']) or 'none'}")
        return {"FINISHED"}


CLASSES = (EMOTALKER_OT_check_environment, EMOTALKER_OT_import_avatar)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
