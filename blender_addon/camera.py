"""Blender camera -> OpenCV camera (viewmat, K) in the avatar's own (FLAME) space.

The core renders in FLAME space with OpenCV cameras (x right, y down, z forward),
as gsplat takes them. Blender cameras look down their local -Z with +Y up, and
the avatar object carries the FLAME-to-Blender transform (FLAME is +Y up,
Blender +Z up) plus whatever the animator did to it. This module is the only
place that converts between the two. numpy only.
"""

from __future__ import annotations

import numpy as np

# Blender camera axes (x right, y up, z backward) to OpenCV (x right, y down, z forward).
BLENDER_TO_OPENCV_CAMERA = np.diag([1.0, -1.0, -1.0, 1.0])

# FLAME (+Y up, +Z out of the face) placed upright in Blender (+Z up, face towards -Y):
# a +90 degree rotation about X.
FLAME_TO_BLENDER = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def intrinsics(lens_mm: float, sensor_width_mm: float, sensor_height_mm: float, sensor_fit: str,
               shift_x: float, shift_y: float, width: int, height: int) -> np.ndarray:
    """K [3,3] in pixels for Blender's lens model (square pixels).

    sensor_fit 'AUTO' fits sensor_width to the larger image side; 'HORIZONTAL' and
    'VERTICAL' fit sensor_width / sensor_height to the width / height. Shifts are in
    units of the fitted side, as in Blender.
    """
    fit = sensor_fit
    if fit == "AUTO":
        fit, sensor = ("HORIZONTAL" if width >= height else "VERTICAL"), sensor_width_mm
    else:
        sensor = sensor_width_mm if fit == "HORIZONTAL" else sensor_height_mm
    side = width if fit == "HORIZONTAL" else height
    f = lens_mm / sensor * side
    cx = width / 2.0 - shift_x * side
    cy = height / 2.0 + shift_y * side
    return np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]], dtype=np.float64)


def viewmat(camera_world: np.ndarray, object_world: np.ndarray) -> np.ndarray:
    """World-to-camera [4,4] (OpenCV) acting on points in the object's local (FLAME) space."""
    return BLENDER_TO_OPENCV_CAMERA @ np.linalg.inv(camera_world) @ object_world


def scene_camera(scene, camera_obj, avatar_obj, width: int | None = None, height: int | None = None):
    """(viewmat [4,4], K [3,3], width, height) for `camera_obj` looking at `avatar_obj`.

    Resolution comes from the scene's render settings (percentage applied) unless given.
    """
    r = scene.render
    if width is None or height is None:
        width = int(r.resolution_x * r.resolution_percentage / 100)
        height = int(r.resolution_y * r.resolution_percentage / 100)
    cam = camera_obj.data
    K = intrinsics(cam.lens, cam.sensor_width, cam.sensor_height, cam.sensor_fit,
                   cam.shift_x, cam.shift_y, width, height)
    V = viewmat(np.array(camera_obj.matrix_world), np.array(avatar_obj.matrix_world))
    return V, K, width, height
