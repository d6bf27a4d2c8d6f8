"""Import a VHAP / GaussianAvatars export (one tracked clip) into our dataset format.

The source layout (see docs/import_tracking.md):

    <export>/transforms.json (or transforms_train.json, _val, _test)
        {"cx", "cy", "fl_x", "fl_y", "w", "h", "camera_angle_x"   (optional, shared),
         "frames": [{"timestep_index", "camera_index", "file_path", "fg_mask_path",
                     "flame_param_path", "transform_matrix", "cx", "cy", "fl_x", "fl_y", "w", "h"}]}
    <export>/flame_param/00000.npz   per timestep: rotation [1,3], translation [1,3],
        neck_pose [1,3], jaw_pose [1,3], eyes_pose [1,6], expr [1,E], shape [S],
        static_offset [1,V,3] (optional), eyelids [1,2] (optional)
    <export>/images/*.png|jpg, <export>/fg_masks/*.png

`transform_matrix` is camera-to-world in OpenGL/Blender camera axes (x right,
y up, z backwards). FLAME's global rotation turns the whole head about the
root joint and the translation moves it; our tracking has neither, so both
are folded into each frame's world-to-camera matrix: the head stays in FLAME
space and the camera moves around it, which images cannot tell apart. The
identity (shape coefficients and static offset) is baked into the dataset's
flame_model.npz, as the format asks.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from emotalker.core.datasets.dataset import FRAME_NAME, ClipInfo, Tracking, write_dataset_json
from emotalker.core.base.errors import InputError
from emotalker.core.base.fileio import read_json, read_npz
from emotalker.core.datasets.writing import check_clip_id, check_labels, open_target, partial_dir, swap_in_clip, write_audio
from emotalker.core.rig.flame import FlameModel

TRANSFORMS_FILES = ("transforms.json", "transforms_train.json", "transforms_val.json", "transforms_test.json")
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass(frozen=True)
class ImportOptions:
    flame: Path  # the FLAME model the tracker used, as flame_model.npz (see convert-flame)
    audio: Path | None = None  # the clip's sound; required for a new clip
    clip_id: str | None = None  # default: the export folder's name
    emotion: str = "neutral"
    intensity: float = 1.0
    split: str = "train"
    fps: float = 25.0
    camera: int | None = None  # which camera_index of a multi-view export (default: the first frame's)


def _frames(src: Path) -> tuple[list[dict], dict, Path]:
    """All frames of the export's transforms files, with the shared fields; and the file named in errors."""
    if src.is_file():
        files, root = [src], src.parent
    else:
        root = src
        files = [src / n for n in TRANSFORMS_FILES if (src / n).is_file()]
        if not files:
            raise InputError(src, f"no {' / '.join(TRANSFORMS_FILES)} found: is this a VHAP / GaussianAvatars export?")
    frames, shared = [], {}
    for f in files:
        meta = read_json(f, "transforms file")
        if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
            raise InputError(f, "a transforms file needs a 'frames' list")
        shared.update({k: v for k, v in meta.items() if k != "frames"})
        for i, fr in enumerate(meta["frames"]):
            for key in ("file_path", "flame_param_path", "transform_matrix"):
                if key not in fr:
                    raise InputError(f, f"frames[{i}] is missing {key!r}")
            frames.append({**fr, "_file": f})
    return frames, shared, root


def _intrinsics(fr: dict, shared: dict, where: Path) -> tuple[np.ndarray, int, int]:
    """K [3,3], width, height of one frame (per-frame fields override the shared ones)."""
    get = lambda k: fr.get(k, shared.get(k))  # noqa: E731
    w, h = get("w"), get("h")
    if w is None or h is None:
        raise InputError(where, "frames need 'w' and 'h' (per frame or shared)")
    fx, fy = get("fl_x"), get("fl_y")
    if fx is None and get("camera_angle_x") is not None:
        fx = 0.5 * w / np.tan(0.5 * float(get("camera_angle_x")))
    fy = fy if fy is not None else fx
    if fx is None:
        raise InputError(where, "frames need focal lengths ('fl_x', 'fl_y' or 'camera_angle_x')")
    cx, cy = get("cx"), get("cy")
    cx = 0.5 * w if cx is None else cx
    cy = 0.5 * h if cy is None else cy
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float32)
    return K, int(w), int(h)


def _load_params(path: Path) -> dict[str, np.ndarray]:
    data = read_npz(path, "FLAME parameter")
    for key, size in (("expr", None), ("jaw_pose", 3), ("rotation", 3), ("translation", 3)):
        if key not in data:
            raise InputError(path, f"missing {key!r}")
        if size is not None and data[key].size != size:
            raise InputError(path, f"{key} must hold {size} values, got shape {list(data[key].shape)}")
    return data


def apply_identity(model: FlameModel, shape: np.ndarray, static_offset: np.ndarray | None) -> FlameModel:
    """The rig with an identity baked into its template (n_shape becomes 0).

    shape [S'] (S' <= the rig's S), static_offset [V',3] (extra rows, e.g. VHAP's teeth, are dropped).
    """
    S = model.n_shape
    shape = np.asarray(shape, np.float32).reshape(-1)[:S]
    v = model.v_template + np.einsum("vcs,s->vc", model.shapedirs[:, :, : len(shape)], shape)
    if static_offset is not None:
        off = np.asarray(static_offset, np.float32).reshape(-1, 3)
        n = min(len(off), model.n_verts)
        v[:n] += off[:n]
    return replace(model, v_template=v.astype(np.float32), shapedirs=model.shapedirs[:, :, S:].copy(), n_shape=0)


def global_transform(rotation: np.ndarray, translation: np.ndarray, root: np.ndarray) -> np.ndarray:
    """FLAME's rigid head motion as a 4x4: x -> R (x - root) + root + t. rotation [3] axis-angle."""
    import torch

    from emotalker.core.rig.flame import axis_angle_to_matrix

    R = axis_angle_to_matrix(torch.as_tensor(rotation, dtype=torch.float64).reshape(3)).numpy()
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = root - R @ root + np.asarray(translation, np.float64).reshape(3)
    return M


def import_vhap(src: str | os.PathLike, out: str | os.PathLike, opts: ImportOptions, log=print) -> ClipInfo:
    """Convert one VHAP / GaussianAvatars export into a clip of the dataset at `out` (made if absent).

    Adding to an existing dataset needs the same identity, frame size and fps.
    """
    src, out = Path(src), Path(out)
    check_labels(opts.emotion, opts.intensity, opts.split)
    frames, shared, root, cam = _camera_frames(src, opts.camera)
    params = [_load_params(root / f["flame_param_path"]) for f in frames]
    model = _rig_with_identity(opts.flame, params[0], root / frames[0]["flame_param_path"])
    tracking, (width, height) = _tracking(frames, params, shared, root, model, opts.flame)
    clip_id = _clip_id(src, opts.clip_id)
    info = ClipInfo(clip_id, opts.emotion, float(opts.intensity), opts.split)
    existing = open_target(out, model, width, height, opts.fps)
    _write_clip(src, out, clip_id, frames, root, (width, height), tracking, opts.audio)
    if not (out / "flame_model.npz").exists():
        model.save(out / "flame_model.npz")
    swap_in_clip(out, clip_id)
    clips = [c for c in existing if c.id != clip_id] + [info]
    write_dataset_json(out, opts.fps, width, height, clips)
    log(f"imported {len(frames)} frames of camera {cam} from {src} as clip {clip_id!r} into {out}")
    return info




def _camera_frames(src: Path, camera: int | None) -> tuple[list[dict], dict, Path, int]:
    """The frames of one camera (default: the first frame's) in timestep order, the shared fields,
    the export's root and the camera index."""
    frames, shared, root = _frames(src)
    if not frames:
        raise InputError(src, "the export has no frames")
    cam = camera if camera is not None else frames[0].get("camera_index", 0)
    frames = [f for f in frames if f.get("camera_index", 0) == cam]
    if not frames:
        raise InputError(src, f"no frames from camera_index {cam}")
    frames.sort(key=lambda f: f.get("timestep_index", 0))
    steps = [f.get("timestep_index", i) for i, f in enumerate(frames)]
    if len(set(steps)) != len(steps):
        raise InputError(frames[0]["_file"], f"camera {cam} has more than one frame for a timestep")
    return frames, shared, root, cam


def _rig_with_identity(flame: Path, first: dict[str, np.ndarray], where: Path) -> FlameModel:
    """The tracker's FLAME rig with the first frame's identity (shape, static offset) baked in."""
    model = FlameModel.load(flame)
    shape = first.get("shape", np.zeros(0, np.float32))
    if shape.size > model.n_shape:
        raise InputError(where, f"shape has {shape.size} coefficients but {flame} has {model.n_shape}")
    return apply_identity(model, shape, first.get("static_offset"))


def _tracking(frames: list[dict], params: list[dict], shared: dict, root: Path, model: FlameModel,
              flame: Path) -> tuple[Tracking, tuple[int, int]]:
    """The clip's per-frame FLAME curves and cameras, and its frame size (width, height).

    The head's rigid motion is folded into each frame's world-to-camera matrix.
    """
    root_joint = (model.J_regressor @ model.v_template)[0].astype(np.float64)
    T = len(frames)
    E = int(params[0]["expr"].size)
    if E > model.n_expr:
        raise InputError(root / frames[0]["flame_param_path"], f"expr has {E} coefficients but {flame} has {model.n_expr}")
    tr = {k: np.zeros(s, np.float32) for k, s in (("expr", (T, E)), ("jaw", (T, 3)), ("neck", (T, 3)), ("eyes", (T, 6)),
                                                   ("eyelids", (T, 2)), ("blink", (T,)), ("K", (T, 3, 3)), ("viewmat", (T, 4, 4)))}
    size = None
    for t, (fr, p) in enumerate(zip(frames, params)):
        _put_pose(tr, t, p, E, root / fr["flame_param_path"])
        K, w, h = _intrinsics(fr, shared, fr["_file"])
        if size is None:
            size = (w, h)
        elif size != (w, h):
            raise InputError(fr["_file"], f"frame {t} is {w}x{h}, earlier frames {size[0]}x{size[1]}")
        tr["K"][t] = K
        tr["viewmat"][t] = _world_to_camera(fr, t) @ global_transform(p["rotation"], p["translation"], root_joint)
    return Tracking(**tr), size


def _put_pose(tr: dict[str, np.ndarray], t: int, p: dict[str, np.ndarray], E: int, where: Path) -> None:
    """Write frame t's expression, jaw, neck, eyes, eyelids and blink into the tracking arrays."""
    if p["expr"].size != E:
        raise InputError(where, f"expr has {p['expr'].size} values, the first frame {E}")
    tr["expr"][t] = p["expr"].reshape(-1)
    tr["jaw"][t] = p["jaw_pose"].reshape(-1)
    tr["neck"][t] = p["neck_pose"].reshape(-1) if "neck_pose" in p else 0
    tr["eyes"][t] = p["eyes_pose"].reshape(-1) if "eyes_pose" in p else 0
    if "eyelids" in p:
        tr["eyelids"][t] = p["eyelids"].reshape(-1)[:2]
        tr["blink"][t] = float(np.clip(tr["eyelids"][t].mean(), 0, 1))


def _world_to_camera(fr: dict, t: int) -> np.ndarray:
    """Frame t's world-to-camera matrix in OpenCV axes, from its camera-to-world transform_matrix in OpenGL axes."""
    c2w = np.asarray(fr["transform_matrix"], np.float64)
    if c2w.shape != (4, 4):
        raise InputError(fr["_file"], f"transform_matrix of frame {t} must be 4x4, got {list(c2w.shape)}")
    return np.linalg.inv(c2w @ GL_TO_CV)


def _clip_id(src: Path, clip_id: str | None) -> str:
    """The clip's id: as given, or the export folder's name."""
    return check_clip_id(clip_id or (src if src.is_dir() else src.parent).resolve().name)




def _write_clip(src: Path, out: Path, clip_id: str, frames: list[dict], root: Path, size: tuple[int, int],
                tracking: Tracking, audio: Path | None) -> None:
    """Write the clip's images (RGBA, the mask as alpha), audio and tracking into its partial folder."""
    from PIL import Image

    clip_dir, tmp = out / "clips" / clip_id, partial_dir(out, clip_id)
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    for t, fr in enumerate(frames):
        img_path = root / fr["file_path"]
        if not img_path.suffix:
            img_path = img_path.with_suffix(".png")
        rgba = _read_rgba(img_path, root / fr["fg_mask_path"] if fr.get("fg_mask_path") else None, size)
        Image.fromarray(rgba, "RGBA").save(tmp / "images" / FRAME_NAME.format(t))
    if audio is not None:
        write_audio(Path(audio), tmp / "audio.wav")
    elif (clip_dir / "audio.wav").is_file():  # re-importing a clip keeps its sound
        shutil.copy2(clip_dir / "audio.wav", tmp / "audio.wav")
    else:
        raise InputError(src, "VHAP exports carry no sound: pass the clip's audio with --audio")
    tracking.save(tmp / "tracking.npz")






def _read_rgba(path: Path, mask_path: Path | None, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            rgba = np.array(im.convert("RGBA"))
        if mask_path is not None:
            with Image.open(mask_path) as m:
                rgba[..., 3] = np.array(m.convert("L"))
    except FileNotFoundError as exc:
        raise InputError(exc.filename, "image not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(path, f"not a readable image ({exc})") from None
    if rgba.shape[1::-1] != size:
        raise InputError(path, f"image is {rgba.shape[1]}x{rgba.shape[0]} but transforms say {size[0]}x{size[1]}")
    return rgba

