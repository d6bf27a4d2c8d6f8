"""The one dataset reader every trainer uses (`dataset/`, format `emotalker-dataset/1`).

    dataset.json        {"format", "fps", "width", "height",
                         "clips": [{"id", "emotion", "intensity", "split"}]}
    flame_model.npz     the rig the clips were tracked with
    clips/<id>/audio.wav
    clips/<id>/images/000000.png   RGBA; alpha is the foreground mask
    clips/<id>/tracking.npz        expr [T,E], jaw [T,3], neck [T,3], eyes [T,6],
                                   eyelids [T,2], blink [T], K [3,3] or [T,3,3],
                                   viewmat [T,4,4]

Opening reads only dataset.json (and checks that flame_model.npz exists);
tracking, images and the rig are read on first use, validated, and cached.
Every problem is one InputError naming the file at fault.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emotalker.core.base.emotions import check_intensity, emotion_index
from emotalker.core.base.errors import InputError
from emotalker.core.base.fileio import read_json, read_npz

FORMAT = "emotalker-dataset/1"
SPLITS = ("train", "test")
FRAME_NAME = "{:06d}.png"
_FRAME_RE = re.compile(r"^(\d{6})\.png$")
_CLIP_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Per-frame arrays of tracking.npz and their shape after the frame axis (None: E, checked vs the rig).
TRACKING_KEYS = {
    "expr": None,
    "jaw": (3,),
    "neck": (3,),
    "eyes": (6,),
    "eyelids": (2,),
    "blink": (),
    "viewmat": (4, 4),
}


@dataclass(frozen=True)
class ClipInfo:
    id: str
    emotion: str
    intensity: float
    split: str  # "train" | "test"
    held_out: bool = False  # intensity between MEAD's levels, kept for interpolation checks


@dataclass
class Tracking:
    """Per-frame FLAME parameters and cameras of one clip (numpy float32, T frames).

    expr [T,E], jaw [T,3], neck [T,3], eyes [T,6], eyelids [T,2], blink [T],
    K [T,3,3] (a single [3,3] in the file is broadcast), viewmat [T,4,4]
    (world-to-camera, OpenCV axes).
    """

    expr: np.ndarray
    jaw: np.ndarray
    neck: np.ndarray
    eyes: np.ndarray
    eyelids: np.ndarray
    blink: np.ndarray
    K: np.ndarray
    viewmat: np.ndarray

    def __len__(self) -> int:
        return int(self.expr.shape[0])

    def flame_params(self):
        """The per-frame FLAME parameters (a FlameParams of torch tensors) that pose the rig for each frame."""
        import torch

        from emotalker.core.rig.flame import FlameParams

        return FlameParams(**{k: torch.from_numpy(np.asarray(getattr(self, k), np.float32))
                              for k in ("expr", "jaw", "neck", "eyes", "eyelids")})

    def posed_vertices(self, model, shape: np.ndarray | None = None) -> np.ndarray:
        """The rig `model` posed for each frame, with an identity `shape` [S] (none: the rig's own):
        [T,V,3] float64 (FLAME space)."""
        from dataclasses import replace

        import torch

        from emotalker.core.rig.flame import FlameRig

        params = self.flame_params()
        if shape is not None and np.size(shape):
            shape = torch.from_numpy(np.asarray(shape, np.float32)).reshape(1, -1).expand(len(self), -1)
            params = replace(params, shape=shape)
        with torch.no_grad():
            verts, _ = FlameRig(model)(params)
        return verts.double().numpy()

    def save(self, path: str | os.PathLike) -> None:
        """Write tracking.npz atomically (K kept per frame)."""
        from emotalker.core.base.fileio import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **{k: np.asarray(getattr(self, k), np.float32) for k in (*TRACKING_KEYS, "K")})


def load_tracking(path: str | os.PathLike, n_expr: int | None = None) -> Tracking:
    """Read and validate one tracking.npz. `n_expr`: the rig's expression count (E may not exceed it)."""
    path = Path(path)
    data = read_npz(path, "tracking")
    missing = [k for k in (*TRACKING_KEYS, "K") if k not in data]
    if missing:
        raise InputError(path, f"tracking is missing {', '.join(missing)}")
    expr = data["expr"]
    if expr.ndim != 2 or expr.shape[0] == 0:
        raise InputError(path, f"expr must be [T,E] with T > 0, got {list(expr.shape)}")
    T = expr.shape[0]
    if n_expr is not None and expr.shape[1] > n_expr:
        raise InputError(path, f"expr has {expr.shape[1]} components but the dataset's rig has only {n_expr}")
    out = {}
    for key, tail in TRACKING_KEYS.items():
        arr = data[key]
        want = (T, expr.shape[1]) if tail is None else (T, *tail)
        if arr.shape != want:
            raise InputError(path, f"{key} must be {list(want)} (T={T} frames, as expr), got {list(arr.shape)}")
        out[key] = arr.astype(np.float32)
    K = data["K"].astype(np.float32)
    if K.shape == (3, 3):
        K = np.broadcast_to(K, (T, 3, 3)).copy()
    elif K.shape != (T, 3, 3):
        raise InputError(path, f"K must be [3,3] or [{T},3,3], got {list(K.shape)}")
    out["K"] = K
    for key, arr in out.items():
        if not np.isfinite(arr).all():
            raise InputError(path, f"{key} holds NaN or infinite values")
    return Tracking(**out)


class Dataset:
    """A dataset folder. Open with `Dataset.open(root)`; everything else is read lazily and cached."""

    def __init__(self, root: Path, fps: float, width: int, height: int, clips: list[ClipInfo], frame_cache: int = 64):
        self.root = root
        self.fps = fps
        self.width = width
        self.height = height
        self.clips = clips
        self._by_id = {c.id: c for c in clips}
        self._flame = None
        self._tracking: dict[str, Tracking] = {}
        self._n_frames: dict[str, int] = {}
        self._frames: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._frame_cache = frame_cache

    # -- opening -----------------------------------------------------------------

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Dataset":
        """Read and check dataset.json; check that flame_model.npz is there."""
        root = Path(root)
        if not root.is_dir():
            raise InputError(root, "dataset folder not found")
        meta_path = root / "dataset.json"
        meta = read_json(meta_path, "dataset.json")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise InputError(meta_path, f"format must be {FORMAT!r}, got {got!r}")
        try:
            fps = float(meta["fps"])
            width, height = int(meta["width"]), int(meta["height"])
            raw_clips = meta["clips"]
        except KeyError as exc:
            raise InputError(meta_path, f"missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise InputError(meta_path, f"fps, width and height must be numbers ({exc})") from None
        if fps <= 0 or width <= 0 or height <= 0:
            raise InputError(meta_path, f"fps, width and height must be positive, got {fps}, {width}, {height}")
        if not isinstance(raw_clips, list):
            raise InputError(meta_path, "clips must be a list")
        clips = [_parse_clip(meta_path, i, c) for i, c in enumerate(raw_clips)]
        seen: set[str] = set()
        for c in clips:
            if c.id in seen:
                raise InputError(meta_path, f"clip id {c.id!r} appears twice")
            seen.add(c.id)
        if not (root / "flame_model.npz").is_file():
            raise InputError(root / "flame_model.npz", "the dataset's FLAME model file not found")
        return cls(root, fps, width, height, clips)

    # -- clips -------------------------------------------------------------------

    def split(self, name: str) -> list[ClipInfo]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return [c for c in self.clips if c.split == name]

    def clip(self, clip_id: str) -> ClipInfo:
        try:
            return self._by_id[clip_id]
        except KeyError:
            raise InputError(self.root / "dataset.json", f"no clip called {clip_id!r}") from None

    def clip_dir(self, clip_id: str) -> Path:
        return self.root / "clips" / self.clip(clip_id).id

    def audio_path(self, clip_id: str) -> Path:
        path = self.clip_dir(clip_id) / "audio.wav"
        if not path.is_file():
            raise InputError(path, "audio file not found")
        return path

    def flame_model(self):
        """The dataset's rig (a FlameModel), loaded and validated once."""
        if self._flame is None:
            from emotalker.core.rig.flame import FlameModel

            self._flame = FlameModel.load(self.root / "flame_model.npz")
        return self._flame

    # -- frames and tracking -----------------------------------------------------

    def n_frames(self, clip_id: str) -> int:
        """Frame count of a clip, from its images (checked to run 000000.png .. without gaps)."""
        if clip_id not in self._n_frames:
            images = self.clip_dir(clip_id) / "images"
            if not images.is_dir():
                raise InputError(images, "images folder not found")
            idx = sorted(int(m.group(1)) for m in map(_FRAME_RE.match, os.listdir(images)) if m)
            if not idx:
                raise InputError(images, "no frames (expected 000000.png, 000001.png, ...)")
            if idx[-1] != len(idx) - 1:
                gap = next(i for i, v in enumerate(idx) if v != i)
                raise InputError(images / FRAME_NAME.format(gap), f"missing frame {gap} (the clip has frames up to {idx[-1]})")
            self._n_frames[clip_id] = len(idx)
        return self._n_frames[clip_id]

    def tracking(self, clip_id: str) -> Tracking:
        """The clip's tracking, validated against the rig and the image count."""
        if clip_id not in self._tracking:
            path = self.clip_dir(clip_id) / "tracking.npz"
            tr = load_tracking(path, n_expr=self.flame_model().n_expr)
            n = self.n_frames(clip_id)
            if len(tr) != n:
                raise InputError(path, f"tracking has {len(tr)} frames but images/ has {n}")
            self._tracking[clip_id] = tr
        return self._tracking[clip_id]

    def frame(self, clip_id: str, t: int) -> np.ndarray:
        """Frame `t` of a clip: float32 [H,W,4] RGBA in 0..1 (a small LRU cache keeps recent ones)."""
        key = (clip_id, int(t))
        hit = self._frames.get(key)
        if hit is not None:
            self._frames.move_to_end(key)
            return hit
        n = self.n_frames(clip_id)
        if not 0 <= t < n:
            raise IndexError(f"frame {t} out of range for clip {clip_id!r} with {n} frames")
        img = self._read_frame(self.clip_dir(clip_id) / "images" / FRAME_NAME.format(t))
        self._frames[key] = img
        if len(self._frames) > self._frame_cache:
            self._frames.popitem(last=False)
        return img

    def _read_frame(self, path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im = im.convert("RGBA") if im.mode != "RGBA" else im
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except FileNotFoundError:
            raise InputError(path, "frame not found") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(path, f"not a readable PNG ({exc})") from None
        if arr.shape[:2] != (self.height, self.width):
            raise InputError(path, f"frame is {arr.shape[1]}x{arr.shape[0]} but dataset.json says {self.width}x{self.height}")
        return arr

    def validate(self) -> None:
        """Check everything eagerly (rig, every clip's audio, images and tracking); first problem raises."""
        self.flame_model()
        for c in self.clips:
            self.audio_path(c.id)
            self.tracking(c.id)
            self.frame(c.id, 0)


def _parse_clip(meta_path: Path, i: int, c) -> ClipInfo:
    if not isinstance(c, dict):
        raise InputError(meta_path, f"clips[{i}] must be an object")
    for key in ("id", "emotion", "intensity", "split"):
        if key not in c:
            raise InputError(meta_path, f"clips[{i}] is missing {key!r}")
    cid = c["id"]
    if not isinstance(cid, str) or not _CLIP_ID_RE.match(cid):
        raise InputError(meta_path, f"clips[{i}] has an invalid id {cid!r} (letters, digits, _ . - only)")
    emotion_index(c["emotion"], meta_path, context=f"clip {cid!r}: ")
    try:
        intensity = float(c["intensity"])
    except (TypeError, ValueError):
        raise InputError(meta_path, f"clip {cid!r}: intensity must be a number, got {c['intensity']!r}") from None
    check_intensity(intensity, meta_path, context=f"clip {cid!r}: ")
    if c["split"] not in SPLITS:
        raise InputError(meta_path, f"clip {cid!r}: split must be 'train' or 'test', got {c['split']!r}")
    return ClipInfo(id=cid, emotion=c["emotion"], intensity=intensity, split=c["split"], held_out=bool(c.get("held_out", False)))


def write_dataset_json(root: str | os.PathLike, fps: float, width: int, height: int, clips: list[ClipInfo], **extra) -> None:
    """Write dataset.json for `clips` (the generator and every importer call this)."""
    from emotalker.core.base.fileio import write_json

    rows = []
    for c in clips:
        row = {"id": c.id, "emotion": c.emotion, "intensity": c.intensity, "split": c.split}
        if c.held_out:
            row["held_out"] = True
        rows.append(row)
    write_json(Path(root) / "dataset.json", {"format": FORMAT, "fps": fps, "width": width, "height": height, **extra, "clips": rows})
