"""The frames' alpha: mediapipe's selfie segmentation, kept to the tracked head and filled by its mesh.

The segmentation finds the whole person (torso included) and can miss parts of
a face in hard light; the dataset's alpha is the avatar's foreground, which is
the head. So the segmentation counts only within `reach` of the fitted head's
projected silhouette (hair, ears and neck stay; shoulders and the background
go), and the silhouette's interior, shrunk by a margin for fitting error, is
always foreground.
"""

from __future__ import annotations

import numpy as np

REACH = 0.12
"""How far beyond the fitted mesh the segmentation still counts, as a fraction of the frame's side (hair)."""
MARGIN = 0.01
"""How far inside its edge the mesh's silhouette is trusted, as a fraction of the frame's side."""


class SelfieMatte:
    """mediapipe's selfie segmentation (its bundled model), as a context manager: `matte(rgb)` -> [H,W] in 0..1.
    Its start-up notices are held back as the landmark detector's are (`native_stderr_to`)."""

    def __enter__(self) -> "SelfieMatte":
        import tempfile

        from emotalker.track.landmarks import import_mediapipe

        self._mp, self._held, self._seg = import_mediapipe(), tempfile.TemporaryFile(), None
        return self

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from emotalker.track.landmarks import native_stderr_to

        with native_stderr_to(self._held):
            if self._seg is None:
                self._seg = self._mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
            mask = self._seg.process(np.ascontiguousarray(rgb)).segmentation_mask
        return np.clip(np.asarray(mask, np.float32), 0.0, 1.0)

    def __exit__(self, *exc) -> None:
        from emotalker.track.landmarks import native_stderr_to

        if self._seg is not None:
            with native_stderr_to(self._held):
                self._seg.close()
        self._held.close()


def head_silhouette(verts: np.ndarray, faces: np.ndarray, viewmat: np.ndarray, K: np.ndarray, size: int) -> np.ndarray:
    """Where the posed mesh covers the frame: bool [size, size]."""
    from emotalker.core.rig.mesh_preview import rasterize

    fid, _ = rasterize(np.asarray(verts, np.float64), faces, np.asarray(viewmat, np.float64), np.asarray(K, np.float64),
                       size, size)
    return fid >= 0


def head_alpha(segmentation: np.ndarray, silhouette: np.ndarray) -> np.ndarray:
    """The head's alpha [H,W] in 0..1 from the person's segmentation and the fitted mesh's silhouette."""
    from scipy.ndimage import distance_transform_edt

    side = max(silhouette.shape)
    if not silhouette.any():
        return np.zeros(silhouette.shape, np.float32)
    outside = distance_transform_edt(~silhouette)  # pixels to the silhouette
    inside = distance_transform_edt(silhouette)  # pixels to its edge
    reach = REACH * side
    window = np.clip((reach - outside) / (0.25 * reach), 0.0, 1.0)  # soft fall-off, no hard cut line
    core = (inside > MARGIN * side).astype(np.float32)
    return np.maximum(core, segmentation * window).astype(np.float32)
