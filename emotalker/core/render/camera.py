"""Cameras for rendered bake outputs: the default front camera and the `--camera C.json` file.

Camera file (`--camera C.json`), OpenCV convention as everywhere in EmoTalker
(x right, y down, z forward; docs/architecture.md, "Conventions"), in FLAME space (metres, +Y up):

    {"format": "emotalker-camera/1",
     "viewmat": [[...4...], [...], [...], [0, 0, 0, 1]],   world-to-camera 4x4
     "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],           intrinsics in pixels
     "width": 512, "height": 512,
     "model": "ortho"}                                      optional: "pinhole" (the default) or "ortho"

"ortho" is gsplat's orthographic camera: a camera-space point (x, y, z) lands on pixel
(fx x + cx, fy y + cy), fx and fy in pixels per metre; z still culls (near 0.01) and orders.
`Camera.to_dict()` writes exactly this (no "model" key for a pinhole, as before it existed),
so a bake records the camera it used.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from emotalker.core.base.errors import InputError
from emotalker.core.base.limits import MAX_IMAGE_SIDE, check_range
from emotalker.core.base.fileio import read_json

if TYPE_CHECKING:
    import torch

FORMAT = "emotalker-camera/1"
MODELS = ("pinhole", "ortho")


@dataclass(frozen=True)
class Camera:
    """A camera: viewmat [4,4] world-to-camera (OpenCV axes), K [3,3], image width x height, and its
    model, "pinhole" or "ortho" (see the module's docstring).

    numpy arrays, or torch tensors for a dataset frame's camera (training keeps them on its device).
    """

    viewmat: np.ndarray | torch.Tensor
    K: np.ndarray | torch.Tensor
    width: int
    height: int
    model: str = "pinhole"

    def to_dict(self) -> dict:
        out = {"format": FORMAT, "viewmat": np.asarray(self.viewmat, float).tolist(),
               "K": np.asarray(self.K, float).tolist(), "width": int(self.width), "height": int(self.height)}
        if self.model != "pinhole":
            out["model"] = self.model
        return out

    @classmethod
    def from_dict(cls, obj, source: str | None = None) -> "Camera":
        """Validate a parsed camera document; InputError naming `source` and the field at fault."""
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
            raise InputError(source, f"camera format is {got!r}, expected {FORMAT!r}")
        try:
            viewmat = np.asarray(obj["viewmat"], dtype=np.float64)
            K = np.asarray(obj["K"], dtype=np.float64)
            width, height = obj["width"], obj["height"]
        except KeyError as exc:
            raise InputError(source, f"camera is missing {exc.args[0]!r} (needs viewmat, K, width, height)") from None
        except (TypeError, ValueError):
            raise InputError(source, "camera viewmat and K must be nested lists of numbers") from None
        if viewmat.shape != (4, 4) or not np.isfinite(viewmat).all():
            raise InputError(source, f"camera viewmat must be a finite 4x4 matrix, got shape {list(viewmat.shape)}")
        if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise InputError(source, "camera K must be a 3x3 intrinsics matrix with positive focal lengths")
        rotation = viewmat[:3, :3]
        if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-4) or np.linalg.det(rotation) <= 0:
            raise InputError(source, "camera viewmat's upper 3x3 must be a rotation (orthonormal, det +1)")
        for name, value in (("width", width), ("height", height)):
            check_range(value, 1, MAX_IMAGE_SIDE, source, f"camera {name}")
        model = obj.get("model", "pinhole")
        if model not in MODELS:
            raise InputError(source, f"camera model is {model!r}, expected one of {list(MODELS)}")
        return cls(viewmat, K, width, height, model)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Camera":
        return cls.from_dict(read_json(path, "camera file"), source=os.fspath(path))


def front_camera(verts: np.ndarray, width: int = 512, height: int | None = None, fov_deg: float = 20.0,
                 fill: float = 0.85) -> Camera:
    """A camera on +Z looking at the head (verts [V,3], FLAME space) so that it fills `fill` of the frame.

    A narrow field of view (a portrait lens) keeps the face's proportions; the
    distance follows from the head's extent, so any rig size frames alike.
    """
    height = height or width
    lo, hi = verts.min(0), verts.max(0)
    centre = 0.5 * (lo + hi)
    focal = 0.5 * height / math.tan(math.radians(fov_deg) / 2)
    # Distance at which the larger of the head's width and height spans `fill` of the shorter image side.
    extent = max(float(hi[0] - lo[0]) * height / width, float(hi[1] - lo[1]))
    distance = focal * extent / (fill * height) + 0.5 * float(hi[2] - lo[2])
    R = np.diag([1.0, -1.0, -1.0])  # OpenCV axes looking towards -Z in FLAME space
    eye = centre + np.array([0.0, 0.0, distance])
    viewmat = np.eye(4)
    viewmat[:3, :3] = R
    viewmat[:3, 3] = -R @ eye
    K = np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    return Camera(viewmat, K, int(width), int(height))
