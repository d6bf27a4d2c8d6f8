"""The EmoTalker panel in the 3D view's N sidebar."""

from __future__ import annotations

import bpy

from .avatar_objects import find_avatar
from .job import RUNNING
from .properties import EMOTIONS


class EMOTALKER_PT_main(bpy.types.Panel):
    bl_label = "EmoTalker"
    bl_idname = "EMOTALKER_PT_main"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "EmoTalker"

    def draw(self, context):
        layout = self.layout
        row = layout.row(align=True)
        row.operator("emotalker.import_avatar", icon="IMPORT")
        row.operator("emotalker.train_avatar", text="Train", icon="OUTLINER_OB_ARMATURE")
        for job in RUNNING:
            layout.label(text=f"{job.message} (Esc to cancel)", icon="TIME")
        avatar = find_avatar(context)
        if avatar is None:
            layout.label(text="Select an avatar, or import one")
            return
        props = avatar.emotalker
        box = layout.box()
        box.label(text=avatar.name, icon="ARMATURE_DATA")
        box.prop(props, "avatar_path")
        box.prop(props, "audio_path")
        box = layout.box()
        box.label(text="Emotion (key these)", icon="KEYTYPE_KEYFRAME_VEC")
        col = box.column(align=True)
        for name in EMOTIONS:
            col.prop(props, name, slider=True)
        box.prop(props, "intensity", slider=True)
        box.prop(props, "blink", slider=True)
        box = layout.box()
        box.label(text="Bake", icon="RENDER_ANIMATION")
        box.prop(props, "cache_dir")
        row = box.row(align=True)
        row.operator("emotalker.bake", icon="PLAY")
        row.operator("emotalker.rebake", icon="FILE_REFRESH")
        box.label(text="Preview: set the render engine to EmoTalker Splats", icon="SHADING_RENDERED")
        box = layout.box()
        box.label(text="Export", icon="EXPORT")
        box.prop(props, "export_format")
        row = box.row(align=True)
        row.enabled = props.export_format != "UNITY"  # the preset fixes both
        row.prop(props, "sh_degree")
        axis = row.row(align=True)
        axis.enabled = props.export_format != "USD"  # a USD stage states its own up axis (Y)
        axis.prop(props, "up_axis", text="")
        box.operator("emotalker.export_ply", icon="POINTCLOUD_DATA")
        box.operator("emotalker.render_mp4", icon="FILE_MOVIE")


CLASSES = (EMOTALKER_PT_main,)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
