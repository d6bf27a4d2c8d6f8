"""Face landmarks on images: mediapipe FaceMesh's 478 points (468 + 10 iris), as pixels.

mediapipe is the `track` extra and is imported only when a detector starts. Version
0.10.21 is pinned because its wheel bundles the FaceMesh model: nothing is downloaded.
Points are in pixels with (0, 0) at the image's top-left corner (pixel (i, j)'s centre is
(j + 0.5, i + 0.5)), x right, y down, as the project's cameras project.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from emotalker.core.base.errors import InputError

N_LANDMARKS = 478
FORMAT = "emotalker-landmarks/1"

# mediapipe's indices of the named contours (its face_mesh_connections, as ordered loops where
# they are loops), written out so that using them needs no mediapipe. "left" is the person's left.
LANDMARK_GROUPS: dict[str, np.ndarray] = {k: np.array(v, np.int64) for k, v in {
    "lips_outer": [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185],
    "lips_inner": [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191],
    "left_eye": [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466],
    "right_eye": [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246],
    "left_iris": [473, 474, 475, 476, 477],  # centre first
    "right_iris": [468, 469, 470, 471, 472],
    "left_brow": [276, 283, 282, 295, 285, 300, 293, 334, 296, 336],
    "right_brow": [46, 53, 52, 65, 55, 70, 63, 105, 66, 107],
    "nose": [168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 97, 326, 327, 45, 220, 115, 48, 64, 275, 440, 344, 278, 294],
    "oval": [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109],
}.items()}


def import_mediapipe():
    """The mediapipe module, or an InputError saying how to install the `track` extra."""
    try:
        import mediapipe
    except ImportError:
        raise InputError(None, "tracking needs mediapipe (the track extra): python3 install.py --extras track, "
                               "or pip install 'emotalker[track]'") from None
    return mediapipe


@dataclass
class LandmarkTrack:
    """The landmarks of one clip: points [F,478,2] float32 pixels (zeros where no face),
    found [F] bool (a face was found), n_faces [F] int32 (faces detected, for "more than one face")."""

    points: np.ndarray
    found: np.ndarray
    n_faces: np.ndarray

    def __len__(self) -> int:
        return int(self.found.shape[0])

    def save(self, path: str | os.PathLike) -> None:
        """Write an npz atomically (no pickled objects)."""
        from emotalker.core.base.fileio import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, format=np.array(FORMAT), points=self.points.astype(np.float32),
                                    found=self.found.astype(bool), n_faces=self.n_faces.astype(np.int32))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LandmarkTrack":
        """Read what `save` wrote; InputError naming the file on any problem."""
        from emotalker.core.base.fileio import read_npz

        data = read_npz(path, "landmarks")
        if str(data.get("format", "")) != FORMAT or not {"points", "found", "n_faces"} <= data.keys():
            raise InputError(path, f"not an {FORMAT} file")
        points, found, n_faces = data["points"], data["found"], data["n_faces"]
        F = found.shape[0] if found.ndim == 1 else -1
        if points.shape != (F, N_LANDMARKS, 2) or n_faces.shape != (F,):
            raise InputError(path, f"landmark arrays disagree: points {list(points.shape)}, found "
                                   f"{list(found.shape)}, n_faces {list(n_faces.shape)}")
        return cls(points.astype(np.float32), found.astype(bool), n_faces.astype(np.int32))


@contextlib.contextmanager
def native_stderr_to(held):
    """Send what C++ code writes to file descriptor 2 meanwhile into the file `held`: FaceMesh's graph
    prints start-up notices there (TFLite's delegate, absl warnings) as it meets its first images, and
    no setting silences them. What was held is shown after all when the block fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(held.fileno(), 2)
    try:
        yield
    except BaseException:
        os.dup2(saved, 2)
        held.seek(0)
        sys.stderr.write(held.read().decode(errors="replace"))
        raise
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _as_rgb8(image: np.ndarray) -> np.ndarray:
    """uint8 [H,W,3] contiguous from uint8 or 0..1 float RGB or RGBA (FaceMesh wants exactly that)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB image [H,W,3], got shape {list(image.shape)}")
    if image.dtype != np.uint8:
        image = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(image[..., :3])


class LandmarkDetector:
    """mediapipe FaceMesh with iris refinement, as a context manager.

    static_images=True treats every image on its own (photographs, renders from different
    views); False follows the face from frame to frame, for a video's frames in order.
    """

    def __init__(self, static_images: bool = False, max_faces: int = 2):
        self._mp = import_mediapipe()  # here, so that a missing extra is reported before any work
        self._options = dict(static_image_mode=static_images, max_num_faces=max_faces, refine_landmarks=True,
                             min_detection_confidence=0.5, min_tracking_confidence=0.5)
        self._mesh = None
        self._held = tempfile.TemporaryFile()

    def __enter__(self) -> "LandmarkDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._mesh is not None:
            with native_stderr_to(self._held):
                self._mesh.close()
            self._mesh = None
        self._held.close()

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray | None, int]:
        """([478,2] float32 pixels of the largest face, or None when there is none; faces found)."""
        rgb = _as_rgb8(rgb)
        h, w = rgb.shape[:2]
        with native_stderr_to(self._held):
            # The graph opens its models in its own threads once started: started here, inside the
            # redirect, its notices land in the held file rather than amid the caller's output.
            if self._mesh is None:
                self._mesh = self._mp.solutions.face_mesh.FaceMesh(**self._options)
            result = self._mesh.process(rgb)
        faces = result.multi_face_landmarks or []
        if not faces:
            return None, 0
        # normalised coordinates span the image from edge to edge
        pts = [np.array([(p.x * w, p.y * h) for p in f.landmark], np.float32) for f in faces]
        area = [np.prod(p.max(0) - p.min(0)) for p in pts]
        return pts[int(np.argmax(area))], len(faces)


def progress_context(progress, total: int, stage: str = "landmarks"):
    """A Progress for a mode string, else `progress` itself (None or an object with update)."""
    from emotalker.core.base.progress import Progress

    return Progress(stage, total, mode=progress) if isinstance(progress, str) else contextlib.nullcontext(progress)


def detect_frames(frames: Iterable[np.ndarray], progress=None, static_images: bool = False,
                  total: int | None = None) -> LandmarkTrack:
    """Landmarks of every frame, in order (FaceMesh follows the face between frames unless static_images).

    Frames without a face get found=False and zero points. frames may be a generator (decoded
    as it goes); `total` then sizes the progress bar. progress: None (silent), a Progress mode
    ("bar", "json", "none") or an object whose `update(1)` is called per frame.
    """
    total = len(frames) if hasattr(frames, "__len__") else (total or 0)
    points, found, n_faces = [], [], []
    with LandmarkDetector(static_images=static_images) as det, progress_context(progress, total) as bar:
        for frame in frames:
            p, n = det.detect(frame)
            points.append(np.zeros((N_LANDMARKS, 2), np.float32) if p is None else p)
            found.append(p is not None)
            n_faces.append(n)
            if bar is not None:
                bar.update(1)
    return LandmarkTrack(np.stack(points) if points else np.zeros((0, N_LANDMARKS, 2), np.float32),
                         np.array(found, bool), np.array(n_faces, np.int32))
