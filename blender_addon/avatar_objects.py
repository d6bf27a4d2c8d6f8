"""Build the avatar's Blender objects from the worker's proxy arrays.

One armature object (the avatar: it carries the properties and the FLAME-to-
Blender transform) with bones for FLAME's joints, and a child mesh with one
shape key per expression component and vertex groups for skinning. Bones rest
along FLAME's +Y with no roll, so a pose bone's local axes are FLAME's axes and
FLAME's axis-angle joint rotations map to bone rotations directly.
"""

from __future__ import annotations

import bpy
import numpy as np
from mathutils import Matrix

from .camera import FLAME_TO_BLENDER

JOINT_NAMES = ("root", "neck", "jaw", "eye_left", "eye_right")
BONE_LENGTH = 0.02  # metres; cosmetic


def build_avatar(context, name: str, proxy: dict, expr_names: list[str]):
    """Create and link the avatar armature and proxy mesh; returns the armature object."""
    joints, parents = proxy["joints"], proxy["parents"]
    arm_data = bpy.data.armatures.new(f"{name}_rig")
    avatar = bpy.data.objects.new(name, arm_data)
    context.collection.objects.link(avatar)
    avatar.matrix_world = Matrix(FLAME_TO_BLENDER.tolist())
    context.view_layer.objects.active = avatar

    bpy.ops.object.mode_set(mode="EDIT")
    bones = []
    for j, joint in enumerate(joints):
        bone = arm_data.edit_bones.new(JOINT_NAMES[j] if j < len(JOINT_NAMES) else f"joint_{j}")
        bone.head = joint.tolist()
        bone.tail = (joint + np.array([0.0, BONE_LENGTH, 0.0])).tolist()
        bone.roll = 0.0
        if parents[j] >= 0:
            bone.parent = bones[parents[j]]
        bones.append(bone)
    bpy.ops.object.mode_set(mode="OBJECT")
    for pb in avatar.pose.bones:
        pb.rotation_mode = "XYZ"

    mesh = bpy.data.meshes.new(f"{name}_proxy")
    verts, faces = proxy["v_template"], proxy["faces"]
    mesh.vertices.add(len(verts))
    mesh.vertices.foreach_set("co", verts.astype(np.float32).ravel())
    mesh.loops.add(faces.size)
    mesh.loops.foreach_set("vertex_index", faces.astype(np.int32).ravel())
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    mesh.polygons.foreach_set("loop_total", np.full(len(faces), 3, dtype=np.int32))
    mesh.update(calc_edges=True)
    mesh.validate()
    proxy_obj = bpy.data.objects.new(f"{name}_proxy", mesh)
    context.collection.objects.link(proxy_obj)
    proxy_obj.parent = avatar

    proxy_obj.shape_key_add(name="Basis", from_mix=False)
    for k, key_name in enumerate(expr_names):
        key = proxy_obj.shape_key_add(name=key_name, from_mix=False)
        key.slider_min, key.slider_max = -3.0, 3.0
        key.data.foreach_set("co", (verts + proxy["expr_dirs"][k]).astype(np.float32).ravel())

    weights = proxy["weights"]
    for j, bone in enumerate(arm_data.bones):
        group = proxy_obj.vertex_groups.new(name=bone.name)
        for w in np.unique(weights[:, j][weights[:, j] > 0]):
            group.add(np.flatnonzero(weights[:, j] == w).tolist(), float(w), "REPLACE")
    modifier = proxy_obj.modifiers.new("EmoTalker skinning", "ARMATURE")
    modifier.object = avatar

    avatar.emotalker.is_avatar = True
    return avatar


def find_avatar(context):
    """The active object's avatar (the object itself or its parent), or None."""
    obj = context.active_object
    while obj is not None and not obj.emotalker.is_avatar:
        obj = obj.parent
    return obj


def proxy_mesh(avatar):
    """The avatar's proxy mesh child."""
    return next((c for c in avatar.children if c.type == "MESH"), None)
