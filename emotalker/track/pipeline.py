"""`emotalker track`: one talking-head video -> one clip of an `emotalker-dataset/1` folder.

    probe the header -> landmarks on every frame at --fps (source pixels) -> a fixed square crop around the
    face -> fit the rig to the landmarks (identity and focal on a dataset's first video) -> RGBA frames
    (alpha: segmentation kept to the fitted head) -> audio, tracking, contact sheet -> swap the clip in

The clip is built in its partial folder (as every importer does), which also holds
what a re-run reuses: the landmarks, the fit and the frames already written, under
a key of the video and the settings. The first video of a dataset fits the identity
and writes the rig with it applied; later videos hold the dataset's rig.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from emotalker.core.base.errors import InputError
from emotalker.core.base.fileio import read_json, read_npz, write_json
from emotalker.core.base.progress import Progress, note
from emotalker.core.datasets.dataset import FRAME_NAME, ClipInfo, Dataset, Tracking, load_tracking, write_dataset_json
from emotalker.core.datasets.writing import check_clip_id, check_labels, open_target, partial_dir, swap_in_clip
from emotalker.track.video import Crop, VideoInfo, extract_audio, probe, read_frames

MAX_MISSING = 0.2
"""Most frames (a fraction) without a face found: a fit there comes from its neighbours only."""
MAX_CROWDED = 0.05
"""Most frames (a fraction) showing more than one face: the tracker follows one person."""
ENLARGE = 1.8
"""The crop's side over the landmarks' larger extent: the sample's framing (the head fills 80 %)."""
RAISE = 0.08
"""How far the crop's centre sits above the landmarks' (a fraction of their height): hair and forehead."""
WORK_FORMAT = "emotalker-track-work/1"
EMBEDDING_FILE = "landmark_embedding.npz"


def track_video(video: str | os.PathLike, out: str | os.PathLike, rig: str | os.PathLike | None = None,
                emotion: str = "neutral", intensity: float = 1.0, fps: float = 25.0, resolution: int = 512,
                split: str = "train", clip_id: str | None = None, settings=None, sheet: bool = True,
                progress: str = "bar") -> ClipInfo:
    """Track one video into a clip of the dataset at `out` (made if absent); a re-run reuses finished work.

    rig: a flame_model.npz for a new dataset (default: the procedural head); an existing dataset's own
    rig is always used. settings: the fit's FitSettings.
    """
    from emotalker.core.base.limits import check_fps, check_range

    out = Path(out)
    check_labels(emotion, intensity, split)
    fps = check_fps(fps, "--fps")
    check_range(resolution, 64, 4096, "--resolution", "resolution")
    info = probe(video)
    if not info.has_audio:
        raise InputError(info.path, "video has no sound track; the avatar learns its mouth from the speech")
    clip_id = check_clip_id(clip_id or clip_name(info.path))
    target = _Target.open(out, rig, resolution, fps)
    key = _work_key(info, fps, resolution, target.rig_key)
    info_clip = ClipInfo(clip_id, emotion, float(intensity), split)
    if target.has_clip(clip_id, key):
        note(progress, f"{info.path}: already tracked as clip {clip_id!r} in {out}; skipped")
        return _relabel(out, target, info_clip)
    work = _open_work(out, clip_id, key)
    result = _track_into(work, info, target, fps, resolution, settings, sheet, progress)
    write_json(work / "track.json", {**key, **result})
    for name in ("key.json", "landmarks.npz", "fit.npz", "embedding.npz"):
        (work / name).unlink(missing_ok=True)
    target.finish(out, clip_id, info_clip, fps, resolution)
    note(progress, f"tracked {result['frames']} frames of {info.path} into clip {clip_id!r} of {out} "
        f"(landmark error {result['residual_px_mean']:.2f} px)")
    return info_clip


def clip_name(path: Path) -> str:
    """A clip id from a video's file name: letters, digits, _ . - kept, anything else made _."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem).lstrip("_.-")
    return name or "clip"


def _relabel(out: Path, target: "_Target", info: ClipInfo) -> ClipInfo:
    """A finished clip's labels as asked now (emotion, intensity and split cost no re-tracking)."""
    clips = [info if c.id == info.id else c for c in target.clips]
    if clips != target.clips:
        write_dataset_json(out, target.fps, target.size, target.size, clips, source="emotalker track")
    return info


def _work_key(info: VideoInfo, fps: float, resolution: int, rig_key: str) -> dict:
    """What a partial folder's work depends on: the video's file and the settings."""
    st = info.path.stat()
    return {"format": WORK_FORMAT, "video": str(info.path.resolve()), "video_bytes": st.st_size,
            "video_mtime_ns": st.st_mtime_ns, "fps": fps, "resolution": resolution, "rig": rig_key}


def _open_work(out: Path, clip_id: str, key: dict) -> Path:
    """The clip's partial folder, kept when a run with the same key left it, else made afresh."""
    work = partial_dir(out, clip_id)
    old = work / "key.json"
    if old.is_file():
        try:
            if read_json(old, "track work key") == key:
                return work
        except InputError:
            pass
    shutil.rmtree(work, ignore_errors=True)
    (work / "images").mkdir(parents=True)
    write_json(old, key)
    return work


def _track_into(work: Path, info: VideoInfo, target: "_Target", fps: float, resolution: int, settings, sheet: bool,
                progress: str) -> dict:
    """Every file of the clip in `work`: landmarks and fit (cached), audio, frames, tracking, sheet."""
    from emotalker.track.landmarks import LandmarkTrack

    clock = [time.monotonic()]
    lm = _landmarks(work, info, fps, progress)
    clock.append(time.monotonic())
    check_faces(info.path, lm)
    extract_audio(info, work / "audio.wav", len(lm.found) / fps)
    # frames already square at the output's size are taken whole (the sample's renders, a re-encoded dataset)
    crop = None if info.width == info.height == resolution else face_crop(lm, info.width, info.height, resolution)
    cropped = LandmarkTrack(points=crop.points(lm.points) if crop else lm.points, found=lm.found, n_faces=lm.n_faces)
    emb = target.embedding(work, progress)
    clock.append(time.monotonic())
    fit = _fit(work, target, emb, cropped, resolution, fps, settings, progress)
    clock.append(time.monotonic())
    verts = target.posed(fit)
    _write_frames(work, info, fps, crop, resolution, target.model, verts, fit.tracking, progress)
    clock.append(time.monotonic())
    fit.tracking.save(work / "tracking.npz")
    if sheet:
        _sheet(work, target, emb, cropped, fit.tracking, verts)
    target.keep_fit(fit, emb)
    return {"frames": len(lm.found), "frames_without_face": int((~lm.found).sum()),
            "crop": asdict(crop) if crop else None, "focal_px": float(fit.focal),
            "residual_px_mean": float(np.mean(fit.residual_px)), "residual_px_max": float(np.max(fit.residual_px)),
            # this run's seconds (near 0 where the partial folder's cache served)
            "seconds": {"landmarks": clock[1] - clock[0], "fit": clock[3] - clock[2], "frames": clock[4] - clock[3]}}


def _landmarks(work: Path, info: VideoInfo, fps: float, progress: str):
    """The landmarks of every frame at `fps`, in source pixels (cached in the partial folder)."""
    from emotalker.track.landmarks import LandmarkTrack, detect_frames

    path = work / "landmarks.npz"
    if path.is_file():
        return LandmarkTrack.load(path)
    estimate = max(1, int(round(info.duration * fps)))
    with Progress("landmarks", total=estimate, mode=progress) as bar:
        lm = detect_frames(read_frames(info, fps), progress=bar)
    lm.save(path)
    return lm


def check_faces(video: Path, lm) -> None:
    """One InputError naming the video when too many frames show no face, or more than one."""
    F = len(lm.found)
    missing = np.flatnonzero(~lm.found)
    if len(missing) == F:
        raise InputError(video, f"no face found in any of its {F} frames")
    if len(missing) > MAX_MISSING * F:
        raise InputError(video, f"no face found in {len(missing)} of {F} frames ({100 * len(missing) / F:.0f} %, "
                                f"more than {100 * MAX_MISSING:.0f} %): frames {_spans(missing)}")
    crowded = np.flatnonzero(lm.n_faces > 1)
    if len(crowded) > MAX_CROWDED * F:
        raise InputError(video, f"more than one face in {len(crowded)} of {F} frames (frames {_spans(crowded)}); "
                                f"the tracker follows one person: crop the video to them")


def _spans(frames: np.ndarray, most: int = 4) -> str:
    """'0-11, 40, 52-60, ...': the first runs of consecutive frame numbers."""
    runs, start = [], frames[0]
    for a, b in zip(frames, list(frames[1:]) + [None]):
        if b is None or b != a + 1:
            runs.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ", ".join(runs[:most]) + (", ..." if len(runs) > most else "")


def face_crop(lm, width: int, height: int, resolution: int) -> Crop:
    """The clip's fixed square crop around the face, scaled to `resolution`.

    From the landmarks' robust box over the frames (percentiles, so a few wild frames do not widen it),
    enlarged to take in the head and moved inside the frame (shrunk when the frame is smaller).
    """
    pts = lm.points[lm.found]
    lo = np.percentile(pts.min(1), 2, axis=0)
    hi = np.percentile(pts.max(1), 98, axis=0)
    extent = hi - lo
    side = int(round(min(ENLARGE * extent.max(), width, height)))
    cx, cy = 0.5 * (lo + hi) - np.array([0.0, RAISE * extent[1]])
    x = int(np.clip(round(cx - side / 2), 0, width - side))
    y = int(np.clip(round(cy - side / 2), 0, height - side))
    return Crop(x, y, side, resolution)


def _fit(work: Path, target: "_Target", emb, track, resolution: int, fps: float, settings, progress: str):
    """The rig fitted to the cropped landmarks (cached in the partial folder: fit.npz beside tracking.npz)."""
    from emotalker.core.base.fileio import atomic_path
    from emotalker.track.fit import ClipFit, FitSettings, fit_clip

    path = work / "fit.npz"
    if path.is_file():
        d = read_npz(path, "fit cache")
        return ClipFit(shape=d["shape"], focal=float(d["focal"]), tracking=load_tracking(work / "tracking.npz"),
                       residual_px=d["residual_px"])
    fit = fit_clip(target.model, emb, track, resolution, resolution, fps, shape=target.shape,
                   settings=settings or FitSettings(), progress=progress)
    fit.tracking.save(work / "tracking.npz")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, shape=np.asarray(fit.shape, np.float32), focal=np.float64(fit.focal),
                 residual_px=np.asarray(fit.residual_px, np.float32))
    return fit


def _write_frames(work: Path, info: VideoInfo, fps: float, crop: Crop | None, size: int, model,
                  verts: np.ndarray, tracking: Tracking, progress: str) -> None:
    """The clip's RGBA frames (the cropped video, alpha from `head_alpha`); frames already written are kept."""
    from emotalker.bake.video import write_png
    from emotalker.track.matting import SelfieMatte, chin_and_crown, head_alpha, head_silhouette
    from emotalker.track.sheet import project

    T = len(tracking)
    chin_id, crown_id = chin_and_crown(model)
    done = sum((work / "images" / FRAME_NAME.format(t)).is_file() for t in range(T))
    with SelfieMatte() as matte, Progress("frames", total=T, mode=progress, initial=done) as bar:
        t = -1
        for t, rgb in enumerate(read_frames(info, fps, crop)):
            if t >= T:
                break
            path = work / "images" / FRAME_NAME.format(t)
            if path.is_file():
                continue
            viewmat, K = tracking.viewmat[t].astype(np.float64), tracking.K[t].astype(np.float64)
            sil = head_silhouette(verts[t], model.faces, viewmat, K, size)
            chin, crown = project(verts[t][[chin_id, crown_id]], viewmat, K)
            alpha = head_alpha(rgb, matte(rgb), sil, chin, crown)
            write_png(path, np.concatenate([rgb, (alpha[..., None] * 255 + 0.5).astype(np.uint8)], -1))
            bar.update(1)
    if t + 1 < T:
        raise InputError(info.path, f"the second reading of the video gave {t + 1} frames, the first {T}")


def _sheet(work: Path, target: "_Target", emb, track, tracking: Tracking, verts: np.ndarray, n: int = 8) -> None:
    """tracking_sheet.png in the clip: n frames spread over the clip with the fit drawn over them."""
    import torch
    from PIL import Image

    from emotalker.track.sheet import overlay, project, write_sheet

    T = len(tracking)
    picks = sorted(set(np.linspace(0, T - 1, min(n, T)).round().astype(int).tolist()))
    model = target.model
    colors = model.albedo if model.albedo is not None else np.full((model.n_verts, 3), 0.7, np.float32)
    with torch.no_grad():
        on_mesh = emb.points(torch.from_numpy(verts[picks]).float()).numpy()
    cells, labels = [], []
    for i, t in enumerate(picks):
        rgba = np.asarray(Image.open(work / "images" / FRAME_NAME.format(t)).convert("RGBA"))
        vm, K = tracking.viewmat[t].astype(np.float64), tracking.K[t].astype(np.float64)
        found = track.points[t][emb.landmark] if track.found[t] else None
        cells.append(overlay(rgba, verts[t], model.faces, colors, vm, K, found, project(on_mesh[i], vm, K)))
        labels.append(f"frame {t}" + ("" if track.found[t] else " (no face)"))
    write_sheet(work / "tracking_sheet.png", cells, labels)


class _Target:
    """The dataset a video goes into: its rig (the dataset's own, or the base rig of a new one) and its clips."""

    def __init__(self, out: Path, model, rig_key: str, rig_path: Path | None, clips: list[ClipInfo], fps: float,
                 size: int, new: bool):
        self.out, self._model, self.rig_key, self.rig_path = out, model, rig_key, rig_path
        self.clips, self.fps, self.size, self.new = clips, fps, size, new
        self.fit = self.emb = None

    @property
    def model(self):
        """The rig; the procedural head is built (seconds) only when first needed, after the faces are checked."""
        if self._model is None:
            from emotalker.core.head import make_head

            self._model = make_head()
        return self._model

    @property
    def shape(self) -> np.ndarray | None:
        """None: a new dataset fits the identity; later videos hold the dataset's (applied to its rig)."""
        return None if self.new else np.zeros(self.model.n_shape, np.float32)

    @classmethod
    def open(cls, out: Path, rig: str | os.PathLike | None, size: int, fps: float) -> "_Target":
        from emotalker.core.rig.flame import FlameModel

        if (out / "dataset.json").is_file():
            model = Dataset.open(out).flame_model()
            if rig is not None and not np.array_equal(FlameModel.load(rig).faces, model.faces):
                raise InputError(rig, f"the dataset {out} was tracked with a rig of another topology")
            clips = open_target(out, model, size, size, fps)
            stamp = (out / "flame_model.npz").stat().st_mtime_ns
            return cls(out, model, f"dataset:{stamp}", None, clips, fps, size, new=False)
        clips = open_target(out, None, size, size, fps)  # a new dataset: only the folder is checked
        if rig is None:
            return cls(out, None, "procedural", None, clips, fps, size, new=True)
        rig = Path(rig)
        st = rig.stat() if rig.is_file() else None
        key = f"{rig.resolve()}:{st.st_size}:{st.st_mtime_ns}" if st else str(rig)
        return cls(out, FlameModel.load(rig), key, rig, clips, fps, size, new=True)

    def has_clip(self, clip_id: str, key: dict) -> bool:
        """Whether the dataset already holds this clip tracked from the same video with the same settings."""
        done = self.out / "clips" / clip_id / "track.json"
        if not any(c.id == clip_id for c in self.clips) or not done.is_file():
            return False
        meta = read_json(done, "track.json")
        # The rig is the dataset's now (the first clip's fit made it), so only the video and settings count.
        return isinstance(meta, dict) and all(meta.get(k) == v for k, v in key.items() if k != "rig")

    def embedding(self, work: Path, progress: str):
        """The landmark embedding: cached in the partial folder, else the dataset's, else made for the rig."""
        from emotalker.track.embedding import LandmarkEmbedding, landmark_embedding

        cache = work / "embedding.npz"
        for path in (cache, self.out / EMBEDDING_FILE):
            if path.is_file():
                return LandmarkEmbedding.load(path)
        emb = landmark_embedding(self.model, self.rig_path, progress=progress)
        emb.save(cache)
        return emb

    def posed(self, fit) -> np.ndarray:
        """The rig posed by a fit: vertices [T,V,3] float64."""
        return fit.tracking.posed_vertices(self.model, fit.shape)

    def keep_fit(self, fit, emb) -> None:
        self.fit, self.emb = fit, emb

    def finish(self, out: Path, clip_id: str, info: ClipInfo, fps: float, size: int) -> None:
        """Swap the finished clip in; a new dataset gets its rig (the fitted identity applied) and embedding."""
        from emotalker.core.datasets.importers.vhap import apply_identity

        if self.new:
            apply_identity(self.model, self.fit.shape, None).save(out / "flame_model.npz")
            self.emb.save(out / EMBEDDING_FILE)
        swap_in_clip(out, clip_id)
        clips = [c for c in self.clips if c.id != clip_id] + [info]
        write_dataset_json(out, fps, size, size, clips, source="emotalker track")
