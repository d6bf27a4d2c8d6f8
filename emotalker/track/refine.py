"""`emotalker refine-tracking`: align each frame's head pose to the frame's pixels through a quick Stage 1.

A landmark fit leaves the head a fraction of a pixel off in each frame, differently in each
clip (docs/tracking.md, "How right it is"). An avatar trained on such frames blurs, and one
scored on them is misaligned. This pass, on a whole dataset:

  1. keeps each clip's landmark fit as `tracking_landmarks.npz` and starts from it, so a re-run
     gives the same tracking;
  2. trains a short Stage 1 on the train split with that tracking (in DATASET/.refine/, resumable);
  3. per clip, frame by frame, finds the rigid motion of the head (a turn about the head's centre
     and a shift) that brings that Stage 1's render closest to the frame (colour L1 and the
     alpha's squared error), starting from the previous frame's; a frame the search does not
     improve (an occlusion, a bad matte) keeps its pose;
  4. folds it into the frame's viewmat, which renders the head exactly as the motion moves it
     (viewmat @ M on the rest pose is viewmat on the moved Gaussians, up to the view direction of
     the SH colours), and writes the clip's tracking.npz; a clip done is recorded, so an
     interrupted run goes on where it stopped.

It changes only the viewmats; expression, jaw, eyes and the matte stay the landmark fit's.
DATASET/refine.json records the settings and, per clip, the quick Stage 1's PSNR against the
frames before and after.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from emotalker.core.base.errors import InputError
from emotalker.core.base.fileio import read_json, write_json
from emotalker.core.base.progress import Progress, note
from emotalker.core.datasets.dataset import Dataset, Tracking

WORK_FORMAT = "emotalker-refine-work/1"
RECORD_FORMAT = "emotalker-refine/1"
LANDMARK_FIT = "tracking_landmarks.npz"
WORK_DIR = ".refine"


@dataclass(frozen=True)
class RefineSettings:
    """The quick Stage 1 and the per-frame pose search of `refine_tracking`."""

    steps: int = 1000
    """Stage 1 steps of the avatar the frames are aligned to."""
    train_resolution: int = 256
    """Stage 1's working size (the longer image side; the dataset's when smaller)."""
    resolution: int = 128
    """Working size of the pose search."""
    iterations: int = 10
    """Adam steps per frame (each frame starts from the previous one's motion)."""
    lr_rotation: float = 2e-3
    """Adam's step for the turn (radians)."""
    lr_translation: float = 2.5e-3
    """Adam's step for the shift, as a fraction of the head's size."""
    lambda_alpha: float = 1.0
    """Weight of the alpha's squared error beside the colour's L1."""


def refine_tracking(dataset: str | os.PathLike, settings: RefineSettings = RefineSettings(), device: str = "auto",
                    progress: str = "bar") -> dict:
    """Refine every clip's head poses in place (see the module's docstring). Returns refine.json's content."""
    from emotalker.core.base.device import resolve_device
    from emotalker.core.base.limits import check_range

    root = Path(dataset)
    ds = Dataset.open(root)
    check_range(settings.steps, 1, 10_000_000, "--steps", "steps")
    check_range(settings.iterations, 0, 1000, "--iterations", "iterations")
    check_range(settings.resolution, 16, 4096, "--resolution", "resolution")
    check_range(settings.train_resolution, 16, 4096, "--train-resolution", "train resolution")
    if not ds.split("train"):
        raise InputError(root / "dataset.json", "no clips in the train split: the refinement trains a Stage 1 on them")
    started = time.monotonic()
    clips = [c.id for c in ds.clips]
    for c in clips:
        _keep_landmark_fit(ds.clip_dir(c))
    work = _open_work(ds, settings, progress)
    ds = Dataset.open(root)  # the trackings may have been put back to the landmark fits
    dev = resolve_device(device)
    model = _quick_stage1(ds, work, settings, dev, progress)
    results = {}
    total = sum(ds.n_frames(c) for c in clips)
    done = [c for c in clips if (work / "clips" / f"{c}.json").is_file()]
    with Progress("refine", total=total, mode=progress, initial=sum(ds.n_frames(c) for c in done)) as bar:
        for c in clips:
            marker = work / "clips" / f"{c}.json"
            if c in done:
                results[c] = read_json(marker, "refinement record")
                continue
            tracking, results[c] = refine_clip(model, ds, c, settings, dev, bar)
            tracking.save(ds.clip_dir(c) / "tracking.npz")
            write_json(marker, results[c])
    record = {"format": RECORD_FORMAT, "settings": asdict(settings), "clips": results,
              "minutes": round((time.monotonic() - started) / 60, 2)}
    write_json(root / "refine.json", record)
    shutil.rmtree(work)
    gain = np.mean([r["psnr_after"] - r["psnr_before"] for r in results.values()])
    note(progress, f"refined the head poses of {total} frames in {len(clips)} clips of {root} "
                   f"(the quick Stage 1 against the frames: {gain:+.2f} dB)")
    return record


def _keep_landmark_fit(clip_dir: Path) -> None:
    """A clip's landmark fit as tracking_landmarks.npz: its tracking.npz, the first time it is refined."""
    from emotalker.core.base.fileio import atomic_path

    kept = clip_dir / LANDMARK_FIT
    if not kept.is_file():
        with atomic_path(kept) as tmp:
            shutil.copyfile(clip_dir / "tracking.npz", tmp)


def _open_work(ds: Dataset, settings: RefineSettings, progress: str) -> Path:
    """The work folder of a run with this key (settings, splits, landmark fits), continued when an interrupted
    run left it; else made afresh, with every clip's tracking put back to its landmark fit."""
    from emotalker.core.base.fileio import atomic_path

    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    key = {"format": WORK_FORMAT, "settings": asdict(settings),
           "clips": {c.id: [c.split, digest(ds.clip_dir(c.id) / LANDMARK_FIT)] for c in ds.clips}}
    work = ds.root / WORK_DIR
    try:
        if read_json(work / "key.json", "refinement work key") == key:
            note(progress, f"continuing the interrupted refinement in {work}")
            return work
    except InputError:
        pass
    shutil.rmtree(work, ignore_errors=True)
    for c in ds.clips:
        d = ds.clip_dir(c.id)
        with atomic_path(d / "tracking.npz") as tmp:
            shutil.copyfile(d / LANDMARK_FIT, tmp)
    (work / "clips").mkdir(parents=True)
    write_json(work / "key.json", key)
    return work


def _quick_stage1(ds: Dataset, work: Path, settings: RefineSettings, device, progress: str):
    """The Stage 1 the frames are aligned to: trained on the landmark fits (resumed when interrupted)."""
    from emotalker.core.models.blendshapes import GaussianBlendshapes
    from emotalker.core.training.neutral import TrainNeutralConfig, train_neutral

    avatar = work / "avatar"
    path = avatar / "neutral.safetensors"
    if not path.is_file():
        size = min(settings.train_resolution, max(ds.width, ds.height))
        cfg = TrainNeutralConfig(steps=settings.steps, resolution=size, eval_frames=0)
        train_neutral(ds.root, avatar, cfg, device=str(device), progress=progress, resume=True)
    model = GaussianBlendshapes.load(path, ds.flame_model(), device=device)
    model.requires_grad_(False)
    return model


def refine_clip(model, ds: Dataset, clip_id: str, settings: RefineSettings, device="cpu", bar=None) -> tuple[Tracking, dict]:
    """The clip's tracking with each frame's viewmat moved to align `model`'s render with the frame,
    and the model's mean PSNR against the frames (at settings.resolution) before and after; a frame the
    search did not improve keeps its pose (frames_kept counts them)."""
    from dataclasses import replace

    import torch

    from emotalker.core.base.threads import single_threaded
    from emotalker.core.datasets.frames import FrameSet

    frames = FrameSet(ds, [clip_id], min(settings.resolution, max(ds.width, ds.height)), device=device)
    tracking = ds.tracking(clip_id)
    viewmats = np.array(tracking.viewmat, np.float32)
    v = model.flame_model.v_template
    size = float(np.linalg.norm(v.max(0) - v.min(0)))  # the head's extent, as Stage 1's trainer measures it
    motion = _RigidMotion(settings, size, device)
    before, after, kept = [], [], 0
    with single_threaded():
        for i in range(len(frames)):
            frame = frames.get(i)
            with torch.no_grad():
                gaussians = model(frame.params)[0]
                centre = gaussians.means.mean(0)
            mse = motion.fit(gaussians, centre, frame, frames.background, settings)
            before.append(mse[0])
            if mse[1] < mse[0]:
                after.append(mse[1])
                viewmats[frame.t] = (frame.viewmat[0].double().cpu() @ motion.matrix(centre)).numpy()
            else:  # the search made it worse (an occlusion, a bad matte): the frame keeps its pose, the next starts afresh
                after.append(mse[0])
                kept += 1
                motion = _RigidMotion(settings, size, device)
            if bar is not None:
                bar.update(1)
    psnr = lambda mse: float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-12))))  # noqa: E731
    return replace(tracking, viewmat=viewmats), {"frames": len(frames), "frames_kept": kept,
                                                  "psnr_before": psnr(before), "psnr_after": psnr(after)}


class _RigidMotion:
    """A turn (axis-angle) about the head's centre and a shift, kept from frame to frame with Adam's moments."""

    def __init__(self, settings: RefineSettings, head_size: float, device):
        import torch

        self.omega = torch.zeros(3, device=device, requires_grad=True)
        self.shift = torch.zeros(3, device=device, requires_grad=True)
        self.opt = torch.optim.Adam([{"params": [self.omega], "lr": settings.lr_rotation},
                                     {"params": [self.shift], "lr": settings.lr_translation * head_size}])

    def apply(self, gaussians, centre):
        """The Gaussians moved by the motion about `centre` (positions and orientations)."""
        from emotalker.core.base.quaternion import matrix_to_quat, quat_multiply
        from emotalker.core.rig.flame import axis_angle_to_matrix

        R = axis_angle_to_matrix(self.omega[None])[0]
        means = (gaussians.means - centre) @ R.T + centre + self.shift
        quats = quat_multiply(matrix_to_quat(R)[None].expand_as(gaussians.quats), gaussians.quats)
        return type(gaussians)(means, quats, gaussians.log_scales, gaussians.opacity_logits, gaussians.sh)

    def fit(self, gaussians, centre, frame, background, settings: RefineSettings) -> tuple[float, float]:
        """settings.iterations Adam steps on this frame; the colour's squared error at the frame's own
        pose and at the motion found."""
        import torch

        from emotalker.core.models.avatar import render_avatar

        with torch.no_grad():
            before = float(((render_avatar(gaussians, frame.camera, background).rgb[0] - frame.image) ** 2).mean())
        for _ in range(settings.iterations):
            out = render_avatar(self.apply(gaussians, centre), frame.camera, background)
            loss = (out.rgb[0] - frame.image).abs().mean() + settings.lambda_alpha * ((out.alpha[0] - frame.mask) ** 2).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        with torch.no_grad():
            after = float(((render_avatar(self.apply(gaussians, centre), frame.camera, background).rgb[0] - frame.image) ** 2).mean())
        return before, after

    def matrix(self, centre) -> "torch.Tensor":
        """The motion about `centre` as a 4x4 (float64) acting on rest-pose points: x -> R (x - c) + c + shift."""
        import torch

        from emotalker.core.rig.flame import axis_angle_to_matrix

        with torch.no_grad():
            R = axis_angle_to_matrix(self.omega[None].double())[0].cpu()
            c = centre.double().cpu()
            M = torch.eye(4, dtype=torch.float64)
            M[:3, :3] = R
            M[:3, 3] = c - R @ c + self.shift.double().cpu()
        return M
