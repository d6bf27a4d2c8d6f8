"""The frames' alpha: mediapipe's selfie segmentation kept to the tracked head, filled by its mesh, filtered by the frame.

The segmentation finds the whole person (torso included) and can miss parts of
a face in hard light; the dataset's alpha is the avatar's foreground, which is
the head and the rig's neck. So:

- above the chin line the segmentation counts within `REACH` of the fitted
  head's projected silhouette (hair and ears stay, the background goes);
  below it only within `NECK_REACH`, so the shoulders and torso go and the
  neck ends where the rig's does;
- the silhouette's interior, shrunk by `MARGIN`, is always foreground. The
  edge itself is the segmentation's: a fitted silhouette can be a few pixels
  too large all round (focal length and distance trade off in a landmark fit,
  and the back of the head has no landmarks);
- a guided filter (He et al., the frame in grey as its guide) makes the alpha
  locally a linear function of the frame: where the alpha is a pixel or two
  off at the edge, the error moves to where the frame's colour changes least,
  so the rim of background colour round the head fades (about a quarter less
  squared error in the frame over white, on one clip of the default sample).

On the default sample's 10 held-out clips (through H.264 over grey) the frames
composited over white went from 21.3 to 28.9 dB against the true RGBA frames
(`benchmarks/track.py`, frames_psnr).
"""

from __future__ import annotations

import numpy as np

REACH = 0.12
"""How far beyond the fitted mesh the segmentation still counts above the chin, as a fraction of the frame's side (hair)."""
NECK_REACH = 0.005
"""The same below the chin line: the neck's edge, not the shoulders."""
CHIN_FADE = 0.03
"""Width of the change from REACH to NECK_REACH across the chin line, as a fraction of the frame's side."""
MARGIN = 0.03
"""How far inside its edge the mesh's silhouette is trusted, as a fraction of the frame's side."""
EDGE_RADIUS = 2
"""The guided filter's window radius, pixels."""
EDGE_EPS = 1e-4
"""The guided filter's regularisation: below the variance of an edge, above that of smooth skin or noise."""


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


def chin_and_crown(model) -> tuple[int, int]:
    """Vertex ids of the chin (the lowest vertex the jaw mostly moves) and the crown (the highest vertex) in the
    rig's rest pose (y up): their projections give a frame's chin line and which way is down."""
    jaw = model.weights[:, 2] > 0.5  # FLAME's joints: root, neck, jaw, eyes
    y = model.v_template[:, 1]
    chin = int(np.flatnonzero(jaw)[np.argmin(y[jaw])]) if jaw.any() else int(np.argmin(y))
    return chin, int(np.argmax(y))


def below_chin(shape: tuple[int, int], chin: np.ndarray, crown: np.ndarray) -> np.ndarray:
    """Signed distance [H,W] of each pixel centre past the chin line, in pixels along the head's down direction
    (crown to chin); negative above it."""
    down = np.asarray(chin, np.float64) - np.asarray(crown, np.float64)
    down /= max(float(np.linalg.norm(down)), 1e-9)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    return (xx - chin[0]) * down[0] + (yy - chin[1]) * down[1]


def guided_filter(guide: np.ndarray, p: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter of p [H,W] by a grey guide [H,W]: p made, window by window, a linear function of
    the guide, so it is smoothed where the guide is flat and keeps the guide's edges."""
    from scipy.ndimage import uniform_filter

    box = lambda x: uniform_filter(x, size=2 * radius + 1, mode="nearest")  # noqa: E731
    mean_i, mean_p = box(guide), box(p)
    a = (box(guide * p) - mean_i * mean_p) / (box(guide * guide) - mean_i * mean_i + eps)
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)


def head_alpha(rgb: np.ndarray, segmentation: np.ndarray, silhouette: np.ndarray, chin: np.ndarray,
               crown: np.ndarray) -> np.ndarray:
    """The head's alpha [H,W] in 0..1 from the frame (uint8 [H,W,3]), the person's segmentation, the fitted mesh's
    silhouette and its chin and crown (pixels, x y)."""
    from scipy.ndimage import distance_transform_edt

    side = max(silhouette.shape)
    if not silhouette.any():
        return np.zeros(silhouette.shape, np.float32)
    outside = distance_transform_edt(~silhouette)  # pixels to the silhouette
    inside = distance_transform_edt(silhouette)  # pixels to its edge
    neck = np.clip(below_chin(silhouette.shape, chin, crown) / (CHIN_FADE * side), 0.0, 1.0)
    reach = (REACH * (1.0 - neck) + NECK_REACH * neck) * side
    window = np.clip((reach - outside) / (0.25 * reach), 0.0, 1.0)  # soft fall-off, no hard cut line
    core = (inside > MARGIN * side).astype(np.float32)
    alpha = np.maximum(core, segmentation * window)
    grey = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    return np.clip(guided_filter(grey, alpha.astype(np.float64), EDGE_RADIUS, EDGE_EPS), 0.0, 1.0).astype(np.float32)
