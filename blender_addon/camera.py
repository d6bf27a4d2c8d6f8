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
               shift_x: float, shift_y: float, width: int, height: int, ortho_scale: float | None = None) -> np.ndarray:
    """K [3,3] in pixels for Blender's lens model (square pixels).

    sensor_fit 'AUTO' fits sensor_width to the larger image side; 'HORIZONTAL' and
    'VERTICAL' fit sensor_width / sensor_height to the width / height. Shifts are in
    units of the fitted side, as in Blender. With `ortho_scale` (an orthographic camera)
    the fitted side spans that many metres instead: the focal lengths are pixels a metre.
    """
    fit = sensor_fit
    if fit == "AUTO":
        fit, sensor = ("HORIZONTAL" if width >= height else "VERTICAL"), sensor_width_mm
    else:
        sensor = sensor_width_mm if fit == "HORIZONTAL" else sensor_height_mm
    side = width if fit == "HORIZONTAL" else height
    f = lens_mm / sensor * side if ortho_scale is None else side / ortho_scale
    cx = width / 2.0 - shift_x * side
    cy = height / 2.0 + shift_y * side
    return np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]], dtype=np.float64)


def viewmat(camera_world: np.ndarray, object_world: np.ndarray) -> np.ndarray:
    """World-to-camera [4,4] (OpenCV) acting on points in the object's local (FLAME) space."""
    return BLENDER_TO_OPENCV_CAMERA @ np.linalg.inv(camera_world) @ object_world


def model(camera_obj) -> str:
    """The core's camera model for a Blender camera object: "ortho" for an orthographic one, else "pinhole"."""
    return "ortho" if camera_obj.data.type == "ORTHO" else "pinhole"


def scene_camera(scene, camera_obj, avatar_obj, width: int | None = None, height: int | None = None):
    """(viewmat [4,4], K [3,3], width, height) for `camera_obj` looking at `avatar_obj`; `model(camera_obj)`
    says which camera model they are for.

    Resolution comes from the scene's render settings (percentage applied) unless given.
    """
    r = scene.render
    if width is None or height is None:
        width = int(r.resolution_x * r.resolution_percentage / 100)
        height = int(r.resolution_y * r.resolution_percentage / 100)
    cam = camera_obj.data
    K = intrinsics(cam.lens, cam.sensor_width, cam.sensor_height, cam.sensor_fit, cam.shift_x, cam.shift_y,
                   width, height, cam.ortho_scale if model(camera_obj) == "ortho" else None)
    V = viewmat(np.array(camera_obj.matrix_world), np.array(avatar_obj.matrix_world))
    return V, K, width, height


def viewport_camera(width: int, height: int, window_matrix, view_matrix, perspective: bool, clip_end: float):
    """(world-to-camera [4,4] OpenCV, K [3,3], model) of a 3D viewport region `width` x `height` from its
    window (projection) and view matrices (Blender world to view); `perspective` is the region's
    `is_perspective`, `clip_end` its space's.

    An orthographic view (numpad views, Auto Perspective, an orthographic camera) becomes gsplat's
    orthographic camera; Blender shows clip_end/2 either side of its view point there, so the camera
    steps back by that much to keep all of it in front of the near plane (depth does not change the image).
    """
    P = np.asarray(window_matrix, dtype=np.float64)
    V = BLENDER_TO_OPENCV_CAMERA @ np.asarray(view_matrix, dtype=np.float64)
    if perspective:
        K = np.array([[P[0, 0] * width / 2, 0, width / 2 * (1 - P[0, 2])],
                      [0, P[1, 1] * height / 2, height / 2 * (1 + P[1, 2])], [0, 0, 1]])
        return V, K, "pinhole"
    K = np.array([[P[0, 0] * width / 2, 0, width / 2 * (1 + P[0, 3])],
                  [0, P[1, 1] * height / 2, height / 2 * (1 - P[1, 3])], [0, 0, 1]])
    back = np.eye(4)
    back[2, 3] = clip_end / 2
    return back @ V, K, "ortho"


def layer_distance(viewmat: np.ndarray, camera_model: str) -> float:
    """How far an avatar (its origin) is from the camera, to composite avatars back to front: its depth along
    the axis for an orthographic camera (whose position along it is arbitrary), else the distance."""
    viewmat = np.asarray(viewmat)
    return float(viewmat[2, 3]) if camera_model == "ortho" else float(np.linalg.norm(viewmat[:3, 3]))
