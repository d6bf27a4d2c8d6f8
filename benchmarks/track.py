"""How right is `emotalker track`? Track a sample dataset's held-out clips from video and compare with its ground truth.

    python benchmarks/track.py [--sample DIR] [--clips N] [--skip-train] [--json out.json]

Each held-out (split "test") clip of the sample is rendered to an MP4 with its
audio (frames over a plain grey background), tracked with the sample's own rig
(`--rig flame_model.npz`), and compared with the generator's tracking:

- landmark_px: mean distance between the landmark embedding's points projected
  through the tracked fit and through the ground truth (pixels at 512 wide);
  fit_residual_px is the fit's own error against the detected landmarks;
- jaw_corr: Pearson correlation of the mouth opening (the gap between the inner
  lips' upper and lower middle points on the posed meshes) over all frames;
  jaw_angle_corr the same for the jaw's rotation alone (the fit may open the mouth
  with expression components instead);
- expr_error_ratio: RMS expression-coefficient error over the RMS error of the
  baseline that answers every frame with the ground truth's mean expression;
  expr_mesh_error_ratio the same for the expression's displacement of the
  rig's vertices (the coefficients times the expression basis), which does not
  count differences between combinations of components that move the face alike;
  expr_signal_mm: how far the true expression moves the landmark points about
  their mean (RMS, mm): what a landmark fit has to see the expression by;
- rot_deg: mean angle between the head's rotation in camera axes, tracked vs
  true (each viewmat's rotation after the neck's, so the split of the head's
  motion between neck and camera does not count);
- fps_landmarks, fps_fit: frames a second of landmark detection and of fitting;
- frames_psnr: the tracked frames (the video's pixels and the matte) composited
  over white against the true RGBA frames composited over white;
- photo_landmark_px: a real photograph (scikit-image's astronaut) fitted as a
  one-frame clip with the procedural head, the fit's mean landmark error (pixels
  at 512); --photo-overlay writes the fit drawn over it.

Unless --skip-train, the train clips are tracked too, a copy of the tracked
dataset goes through `emotalker refine-tracking` (the head poses aligned to the
pixels through a quick Stage 1; refine_minutes, and rot_deg_refined and
landmark_px_refined as above), and `emotalker train all` runs on the refined
dataset, on the landmark fit alone and on the same clips with the ground-truth
tracking, with the same settings (--train-args); `emotalker eval --no-emotion`
on the held-out clips gives psnr_tracked, psnr_tracked_landmarks and
psnr_ground_truth, each against its own dataset's frames.
psnr_tracked_true_frames scores the refined avatar, driven by its own tracking,
against the true frames: the same targets as psnr_ground_truth, where
psnr_tracked's targets went through H.264 and the matte.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotalker.core.datasets.dataset import ClipInfo, Dataset, write_dataset_json  # noqa: E402

TRAIN_ARGS = "--neutral-steps 2000 --a2e-steps 300 --emotion-steps 200"
BACKGROUND = (0.5, 0.5, 0.5)
MOUTH = ((81, 82, 13, 312, 311), (178, 87, 14, 317, 402))  # mediapipe: the inner lips, upper and lower middle


def render_video(ds: Dataset, clip_id: str, out: Path) -> Path:
    """The clip's frames over a plain background, with its audio, as an MP4."""
    from emotalker.bake.video import encode_mp4

    images = ds.clip_dir(clip_id) / "images"
    frames = [images / f"{t:06d}.png" for t in range(ds.n_frames(clip_id))]
    path = out / f"{clip_id}.mp4"
    if not path.is_file():
        encode_mp4(frames, path, ds.fps, audio=ds.audio_path(clip_id), background=BACKGROUND)
    return path


def compare_clip(gt: Dataset, tracked: Dataset, clip_id: str, emb) -> dict:
    """Per-frame arrays comparing one tracked clip with its ground truth."""
    import torch

    from emotalker.track.fit import head_rotations, rotation_error_deg
    from emotalker.track.sheet import project

    tg, tt = gt.tracking(clip_id), tracked.tracking(clip_id)
    rig = gt.flame_model()
    vg, vt = tg.posed_vertices(rig), tt.posed_vertices(tracked.flame_model())
    with torch.no_grad():
        pg, pt = (emb.points(torch.from_numpy(v)).numpy() for v in (vg, vt))
    scale = 512 / gt.width
    lm = np.array([np.linalg.norm(project(pt[t], tt.viewmat[t].astype(np.float64), tt.K[t].astype(np.float64))
                                  - project(pg[t], tg.viewmat[t].astype(np.float64), tg.K[t].astype(np.float64)), axis=1).mean()
                   for t in range(len(tg))]) * scale
    upper, lower = (emb.index_of(ids) for ids in MOUTH)
    gap = lambda p: np.linalg.norm(p[:, upper].mean(1) - p[:, lower].mean(1), axis=1)  # noqa: E731
    E = max(tg.expr.shape[1], tt.expr.shape[1])
    pad = lambda e: np.pad(e, ((0, 0), (0, E - e.shape[1])))  # noqa: E731
    basis = rig.shapedirs[:, :, rig.n_shape:]  # [V,3,E]
    n = min(basis.shape[2], E)
    mesh = lambda e: np.einsum("vce,te->tvc", basis[:, :, :n], e[:, :n])  # noqa: E731
    expr_mesh_gt = mesh(pad(tg.expr))
    with torch.no_grad():  # the embedding is linear in the vertices: it carries displacements too
        expr_at_landmarks = emb.points(torch.from_numpy(expr_mesh_gt)).numpy()
    return {"landmark_px": lm, "mouth_gt": gap(pg), "mouth_tracked": gap(pt),
            "expr_at_landmarks": expr_at_landmarks, "expr_mesh_gt": expr_mesh_gt,
            "expr_mesh_tracked": mesh(pad(tt.expr)),
            "frames_psnr": frames_psnr(gt, tracked, clip_id),
            "jaw_gt": tg.jaw[:, 0], "jaw_tracked": tt.jaw[:, 0], "expr_gt": pad(tg.expr), "expr_tracked": pad(tt.expr),
            "rot_deg": rotation_error_deg(head_rotations(tt), head_rotations(tg))}


def frames_psnr(gt: Dataset, tracked: Dataset, clip_id: str, stride: int = 5) -> np.ndarray:
    """PSNR per compared frame (every stride-th) of the tracked frames over white against the true frames over white."""
    from PIL import Image

    def over_white(path: Path) -> np.ndarray:
        rgba = np.asarray(Image.open(path).convert("RGBA"), np.float64) / 255.0
        return rgba[..., :3] * rgba[..., 3:] + 1.0 - rgba[..., 3:]

    names = [f"{t:06d}.png" for t in range(0, min(gt.n_frames(clip_id), tracked.n_frames(clip_id)), stride)]
    mse = [((over_white(gt.clip_dir(clip_id) / "images" / n) - over_white(tracked.clip_dir(clip_id) / "images" / n)) ** 2).mean()
           for n in names]
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-12))


def summarise(rows: list[dict]) -> dict:
    """The benchmark's figures over all compared frames."""
    cat = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    err = ((cat["expr_tracked"] - cat["expr_gt"]) ** 2).sum(1).mean()
    base = ((cat["expr_gt"].mean(0) - cat["expr_gt"]) ** 2).sum(1).mean()
    mesh_err = ((cat["expr_mesh_tracked"] - cat["expr_mesh_gt"]) ** 2).mean()
    mesh_base = ((cat["expr_mesh_gt"].mean(0) - cat["expr_mesh_gt"]) ** 2).mean()
    lm_expr = cat["expr_at_landmarks"]
    return {"landmark_px": float(cat["landmark_px"].mean()),
            "jaw_corr": float(np.corrcoef(cat["mouth_tracked"], cat["mouth_gt"])[0, 1]),
            "jaw_angle_corr": float(np.corrcoef(cat["jaw_tracked"], cat["jaw_gt"])[0, 1]),
            "expr_error_ratio": float(np.sqrt(err / base)),
            "expr_mesh_error_ratio": float(np.sqrt(mesh_err / mesh_base)),
            "expr_signal_mm": 1000 * float(np.sqrt(((lm_expr - lm_expr.mean(0)) ** 2).sum(-1).mean())),
            "frames_psnr": float(cat["frames_psnr"].mean()),
            "rot_deg": float(cat["rot_deg"].mean()), "rot_deg_max": float(cat["rot_deg"].max()),
            "frames": int(len(cat["rot_deg"]))}


def photo_figures(overlay_png: Path | None) -> dict:
    """A real photograph (scikit-image's astronaut) fitted as a one-frame clip with the procedural head:
    the fit's mean landmark error (pixels at 512) and, when asked, the overlay image."""
    from PIL import Image
    from skimage.data import astronaut

    from emotalker.core.head import make_head
    from emotalker.track.embedding import landmark_embedding
    from emotalker.track.fit import fit_clip
    from emotalker.track.landmarks import LandmarkDetector, LandmarkTrack
    from emotalker.track.pipeline import face_crop
    from emotalker.track.sheet import overlay, project, write_sheet

    image, size = astronaut(), 512
    with LandmarkDetector(static_images=True) as det:
        points, n = det.detect(image)
    crop = face_crop(LandmarkTrack(points[None], np.array([True]), np.array([n], np.int32)), image.shape[1], image.shape[0], size)
    square = image[crop.y:crop.y + crop.side, crop.x:crop.x + crop.side]
    rgb = np.asarray(Image.fromarray(square).resize((size, size), Image.LANCZOS))
    track = LandmarkTrack(crop.points(points)[None], np.array([True]), np.array([n], np.int32))
    model = make_head()
    emb = landmark_embedding(model)
    fit = fit_clip(model, emb, track, size, size, 25.0)
    if overlay_png is not None:
        import torch

        verts = fit.tracking.posed_vertices(model, fit.shape)
        vm, K = fit.tracking.viewmat[0].astype(np.float64), fit.tracking.K[0].astype(np.float64)
        on_mesh = emb.points(torch.from_numpy(verts)).numpy()[0]
        rgba = np.concatenate([rgb, np.full((size, size, 1), 255, np.uint8)], -1)
        cell = overlay(rgba, verts[0], model.faces, model.albedo, vm, K, track.points[0][emb.landmark], project(on_mesh, vm, K))
        write_sheet(overlay_png, [rgb, cell], ["astronaut (scikit-image)", f"fit: {fit.residual_px[0]:.2f} px"], cell_size=384)
    return {"photo_landmark_px": float(fit.residual_px[0]) * 512 / size}


def track_all(gt: Dataset, clips: list[ClipInfo], work: Path, progress: str) -> Dataset:
    """Render and track each clip into work/tracked with the sample's rig, keeping its labels."""
    from emotalker.track.pipeline import track_video

    (work / "videos").mkdir(parents=True, exist_ok=True)
    for c in clips:
        video = render_video(gt, c.id, work / "videos")
        track_video(video, work / "tracked", rig=gt.root / "flame_model.npz", emotion=c.emotion, intensity=c.intensity,
                    fps=gt.fps, resolution=gt.width, split=c.split, clip_id=c.id, progress=progress)
    return Dataset.open(work / "tracked")


def speeds(tracked: Dataset, clips: list[ClipInfo]) -> dict:
    """Frames a second of landmarks and fitting, from each clip's track.json."""
    from emotalker.core.base.fileio import read_json

    metas = [read_json(tracked.clip_dir(c.id) / "track.json") for c in clips]
    frames = sum(m["frames"] for m in metas)
    return {"fps_landmarks": frames / max(sum(m["seconds"]["landmarks"] for m in metas), 1e-9),
            "fps_fit": frames / max(sum(m["seconds"]["fit"] for m in metas), 1e-9),
            "fit_residual_px": float(np.mean([m["residual_px_mean"] for m in metas])) * 512 / tracked.width}


def refine_copy(tracked: Path, out: Path, progress: str) -> Dataset:
    """`emotalker refine-tracking` on a copy of the tracked dataset (the landmark fit stays for comparison)."""
    import shutil

    from emotalker.track.refine import refine_tracking

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(tracked, out)
    refine_tracking(out, progress=progress)
    return Dataset.open(out)


def ground_truth_subset(gt: Dataset, clips: list[ClipInfo], out: Path) -> Path:
    """A dataset of the same clips with the ground-truth tracking (links to the sample's files)."""
    (out / "clips").mkdir(parents=True, exist_ok=True)
    for name in ("flame_model.npz",):
        if not (out / name).exists():
            os.symlink(gt.root.resolve() / name, out / name)
    for c in clips:
        if not (out / "clips" / c.id).exists():
            os.symlink(gt.clip_dir(c.id).resolve(), out / "clips" / c.id)
    write_dataset_json(out, gt.fps, gt.width, gt.height, clips)
    return out


def tracked_on_true_frames(gt: Dataset, tracked: Dataset, clips: list[ClipInfo], out: Path) -> Path:
    """A dataset of the held-out clips with the tracked rig and tracking but the true frames (links to both):
    the tracked avatar scored against the same targets as the ground-truth one."""
    from emotalker.core.base.fileio import read_json

    for c in clips:
        if read_json(tracked.clip_dir(c.id) / "track.json").get("crop") is not None:
            raise SystemExit(f"{c.id}: the tracked frames are a crop of the video, so the true frames do not line up")
        clip = out / "clips" / c.id
        clip.mkdir(parents=True, exist_ok=True)
        for name, src in (("images", gt.clip_dir(c.id)), ("audio.wav", gt.clip_dir(c.id)),
                          ("tracking.npz", tracked.clip_dir(c.id))):
            link(src / name, clip / name)
    link(tracked.root / "flame_model.npz", out / "flame_model.npz")
    write_dataset_json(out, gt.fps, gt.width, gt.height, clips)
    return out


def link(target: Path, path: Path) -> None:
    """path -> target, replacing a link a run on other data left."""
    if path.is_symlink():
        path.unlink()
    os.symlink(target.resolve(), path)


def train(dataset: Path, avatar: Path, train_args: str) -> None:
    """`emotalker train all` with the benchmark's settings, into a fresh avatar folder."""
    import shutil

    shutil.rmtree(avatar, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "emotalker", "train", "all", str(dataset), "--out", str(avatar), "--progress",
                    "none", *shlex.split(train_args)], check=True)


def held_out_psnr(avatar: Path, dataset: Path, name: str) -> float:
    """`emotalker eval --no-emotion` on the dataset's test split: Stage 1 driven by the dataset's tracking."""
    out = avatar / f"eval_{name}.json"
    subprocess.run([sys.executable, "-m", "emotalker", "eval", str(avatar), str(dataset), "--split", "test",
                    "--no-emotion", "--json", str(out)], check=True, stdout=subprocess.DEVNULL)
    return float(json.loads(out.read_text())["psnr"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tmp = Path(tempfile.gettempdir())
    ap.add_argument("--sample", default=str(tmp / "emotalker-sample-default"),
                    help="a make-sample dataset (default: the one benchmarks/train_neutral.py reads)")
    ap.add_argument("--work", default=str(tmp / "emotalker-track-bench"), help="videos, tracked dataset, avatars")
    ap.add_argument("--clips", type=int, default=0, help="at most this many held-out clips (0: all)")
    ap.add_argument("--train-clips", type=int, default=0, help="at most this many train clips for the training runs (0: all)")
    ap.add_argument("--skip-train", action="store_true", help="no training: tracking figures only")
    ap.add_argument("--train-args", default=TRAIN_ARGS, help=f"`train all` settings for both runs (default: {TRAIN_ARGS!r})")
    ap.add_argument("--progress", choices=("bar", "json", "none"), default="none")
    ap.add_argument("--photo-overlay", help="write the photograph's fit over it here (PNG)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    from emotalker.track.embedding import landmark_embedding

    gt, work = Dataset.open(args.sample), Path(args.work)
    test = gt.split("test")[: args.clips or None]
    clips = test if args.skip_train else gt.split("train")[: args.train_clips or None] + test
    start = time.monotonic()
    tracked = track_all(gt, clips, work, args.progress)
    emb = landmark_embedding(gt.flame_model(), gt.root / "flame_model.npz")
    rows = []
    for c in test:
        rows.append(compare_clip(gt, tracked, c.id, emb))
        r = summarise([rows[-1]])
        print(f"{c.id:24s} landmarks {r['landmark_px']:.2f} px  mouth r {r['jaw_corr']:.3f} (jaw angle {r['jaw_angle_corr']:.3f})"
              f"  expr error ratio {r['expr_error_ratio']:.2f}  rotation {r['rot_deg']:.2f} deg")
    summary = {"clips": len(test), "width": gt.width, **summarise(rows), **speeds(tracked, test),
               **photo_figures(Path(args.photo_overlay) if args.photo_overlay else None),
               "load_average": os.getloadavg()[0], "minutes": (time.monotonic() - start) / 60}
    if not args.skip_train:
        refined = refine_copy(work / "tracked", work / "refined", args.progress)
        summary["refine_minutes"] = json.loads((refined.root / "refine.json").read_text())["minutes"]
        after = summarise([compare_clip(gt, refined, c.id, emb) for c in test])
        summary.update(rot_deg_refined=after["rot_deg"], landmark_px_refined=after["landmark_px"])
        train(work / "tracked", work / "avatar_landmarks", args.train_args)
        summary["psnr_tracked_landmarks"] = held_out_psnr(work / "avatar_landmarks", work / "tracked", "own_frames")
        train(refined.root, work / "avatar_tracked", args.train_args)
        summary["psnr_tracked"] = held_out_psnr(work / "avatar_tracked", refined.root, "own_frames")
        true_frames = tracked_on_true_frames(gt, refined, test, work / "tracked_true_frames")
        summary["psnr_tracked_true_frames"] = held_out_psnr(work / "avatar_tracked", true_frames, "true_frames")
        truth = ground_truth_subset(gt, clips, work / "ground_truth")
        train(truth, work / "avatar_ground_truth", args.train_args)
        summary["psnr_ground_truth"] = held_out_psnr(work / "avatar_ground_truth", truth, "test")
        summary["train_args"] = args.train_args
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
