"""FLAME curves <-> Blender F-curves on the proxy's shape keys and the rig's bones.

A bake's curves (`<name>_flame.npz`, see emotalker/bake/engine.py FlameCurves)
become one key per frame on each expression shape key and on the jaw, neck and
eye bones (XYZ Euler, converted from FLAME's axis-angle), so animators can edit
them in the Graph Editor; `read_curves` samples the edited F-curves back into
the same format for a re-bake. numpy only besides bpy.
"""

from __future__ import annotations

import numpy as np

from .compat import fcurve_ensure, fcurve_find

POSE_BONES = (("jaw", "jaw", slice(0, 3)), ("neck", "neck", slice(0, 3)),
              ("eye_left", "eyes", slice(0, 3)), ("eye_right", "eyes", slice(3, 6)))
LINEAR = 1  # KeyframePoint.interpolation enum value of 'LINEAR'


def axis_angle_to_euler_xyz(aa: np.ndarray) -> np.ndarray:
    """aa [T,3] -> Blender 'XYZ' Euler angles [T,3] (R = Rz @ Ry @ Rx)."""
    R = _rodrigues(aa)
    y = np.arcsin(np.clip(-R[:, 2, 0], -1.0, 1.0))
    x = np.arctan2(R[:, 2, 1], R[:, 2, 2])
    z = np.arctan2(R[:, 1, 0], R[:, 0, 0])
    return np.stack([x, y, z], 1)


def euler_xyz_to_axis_angle(e: np.ndarray) -> np.ndarray:
    """Blender 'XYZ' Euler [T,3] -> axis-angle [T,3]."""
    cx, cy, cz = np.cos(e).T
    sx, sy, sz = np.sin(e).T
    R = np.empty((len(e), 3, 3))
    R[:, 0] = np.stack([cy * cz, sx * sy * cz - cx * sz, cx * sy * cz + sx * sz], 1)
    R[:, 1] = np.stack([cy * sz, sx * sy * sz + cx * cz, cx * sy * sz - sx * cz], 1)
    R[:, 2] = np.stack([-sy, sx * cy, cx * cy], 1)
    angle = np.arccos(np.clip((np.trace(R, axis1=1, axis2=2) - 1) / 2, -1.0, 1.0))
    axis = np.stack([R[:, 2, 1] - R[:, 1, 2], R[:, 0, 2] - R[:, 2, 0], R[:, 1, 0] - R[:, 0, 1]], 1)
    s = np.sin(angle)
    scale = np.where(s > 1e-8, angle / np.maximum(2 * s, 1e-12), 0.5)  # small angles: aa ~ axis/2
    return axis * scale[:, None]


def _rodrigues(aa: np.ndarray) -> np.ndarray:
    theta = np.linalg.norm(aa, axis=1)
    k = aa / np.maximum(theta, 1e-12)[:, None]
    K = np.zeros((len(aa), 3, 3))
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    K[:, 1, 0], K[:, 2, 0], K[:, 2, 1] = k[:, 2], -k[:, 1], k[:, 0]
    s, c = np.sin(theta)[:, None, None], np.cos(theta)[:, None, None]
    return np.eye(3) + s * K + (1 - c) * (K @ K)


def _action(id_block, name: str):
    import bpy

    if id_block.animation_data is None:
        id_block.animation_data_create()
    if id_block.animation_data.action is None:
        id_block.animation_data.action = bpy.data.actions.new(name)
    return id_block.animation_data.action


def _write_keys(fcurve, frames: np.ndarray, values: np.ndarray) -> None:
    points = fcurve.keyframe_points
    points.clear()
    points.add(len(frames))
    points.foreach_set("co", np.stack([frames, values], 1).astype(np.float32).ravel())
    points.foreach_set("interpolation", np.full(len(frames), LINEAR, dtype=np.int32))
    fcurve.update()


def shape_key_path(name: str) -> str:
    return f'key_blocks["{name}"].value'


def apply_curves(avatar, proxy, curves: dict, expr_names: list[str]) -> int:
    """Key every frame of `curves` onto `proxy`'s shape keys and `avatar`'s bones; returns the F-curve count."""
    T = len(curves["expr"])
    frames = int(curves["frame_start"]) + np.arange(T, dtype=np.float64)
    key = proxy.data.shape_keys
    action = _action(key, f"{avatar.name}_expressions")
    count = 0
    for k, name in enumerate(expr_names[: curves["expr"].shape[1]]):
        _write_keys(fcurve_ensure(action, key, shape_key_path(name)), frames, curves["expr"][:, k])
        count += 1
    action = _action(avatar, f"{avatar.name}_action")
    for bone, field, cols in POSE_BONES:
        if bone not in avatar.pose.bones:
            continue
        euler = axis_angle_to_euler_xyz(np.asarray(curves[field])[:, cols].astype(np.float64))
        for i in range(3):
            fc = fcurve_ensure(action, avatar, f'pose.bones["{bone}"].rotation_euler', index=i)
            _write_keys(fc, frames, euler[:, i])
            count += 1
    return count


def _sample(action, data_path: str, index: int, frames: np.ndarray, default: float) -> np.ndarray:
    fc = fcurve_find(action, data_path, index) if action is not None else None
    if fc is not None:
        return np.array([fc.evaluate(float(f)) for f in frames], dtype=np.float32)
    return np.full(len(frames), default, dtype=np.float32)


def read_curves(avatar, proxy, base: dict, expr_names: list[str]) -> dict:
    """The edited F-curves sampled at `base`'s frames, in the curves format (eyelids etc. kept from `base`)."""
    T = len(base["expr"])
    frames = int(base["frame_start"]) + np.arange(T)
    key = proxy.data.shape_keys
    key_action = key.animation_data.action if key and key.animation_data else None
    out = {k: np.array(v) for k, v in base.items()}
    for k, name in enumerate(expr_names[: base["expr"].shape[1]]):
        block = key.key_blocks.get(name)
        out["expr"][:, k] = _sample(key_action, shape_key_path(name), 0, frames, block.value if block else 0.0)
    action = avatar.animation_data.action if avatar.animation_data else None
    for bone, field, cols in POSE_BONES:
        if bone not in avatar.pose.bones:
            continue
        euler = np.stack([_sample(action, f'pose.bones["{bone}"].rotation_euler', i, frames,
                                  avatar.pose.bones[bone].rotation_euler[i]) for i in range(3)], 1)
        out[field][:, cols] = euler_xyz_to_axis_angle(euler.astype(np.float64))
    return out


def sample_property(avatar, name: str, frames: np.ndarray) -> np.ndarray:
    """An avatar property (`emotalker.<name>`) at each frame: its F-curve, or its current value."""
    action = avatar.animation_data.action if avatar.animation_data else None
    return _sample(action, f"emotalker.{name}", 0, frames, float(getattr(avatar.emotalker, name)))
