"""Size, write speed and render fidelity of the compressed frame sequences (issue 16, docs/exports.md).

    python benchmarks/export.py                      # the shipped demo avatar and speech
    python benchmarks/export.py --avatar A --audio B.wav --json out.json

The avatar's clip is baked once (happy cross-fading to sad, as the demo) to raw
PLY frames at the avatar's own SH degree; the first --frames of them (125, or
the whole clip when it is shorter) are then written again, in memory order, by
each writer the bake uses (emotalker.bake.ply.write_frame), one new file a
frame, the writers taking turns frame by frame:

  ply        raw INRIA PLY at the avatar's own SH degree
  ply_sh3    the SH degree 3 PLY a Unity user ships today (--preset unity: 45 f_rest, zero-padded)
  spz        Niantic SPZ v3 at the avatar's own degree
  cply       PlayCanvas compressed PLY at the avatar's own degree

Figures: bytes a frame (mean) and frames written a second for each; spz_ratio
and cply_ratio = SH3 PLY bytes / that format's bytes (goal: SPZ >= 10); PSNR of
our renders (CPU, front camera, --resolution) of --psnr-frames evenly spaced
frames as PlayCanvas splat-transform decodes them against renders of the raw
frames (goal: SPZ >= 40 dB; mean and minimum over those frames). Decoding needs
node and `npm install --prefix build/npm @playcanvas/splat-transform`.
Write speeds are wall-clock on whatever else the machine runs: indicative only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emotalker.bake.demo import DEMO_AVATAR, DEMO_SPEECH, demo_tracks  # noqa: E402
from emotalker.bake.ply import PlyFrame, ply_property_names, read_ply, write_frame  # noqa: E402

SPLAT_TRANSFORM = REPO / "build" / "npm" / "node_modules" / "@playcanvas" / "splat-transform" / "bin" / "cli.mjs"
WRITERS = {"ply": ("ply", None, ".ply"), "ply_sh3": ("ply", 3, ".ply"), "spz": ("spz", None, ".spz"),
           "cply": ("compressed-ply", None, ".compressed.ply")}
"""name -> (encoding, SH degree (None: the avatar's own), file suffix)."""


def bake_raw(avatar: Path, audio: Path, folder: Path, threads: int | None) -> list[Path]:
    """The clip's raw PLY frames at the avatar's own SH degree, as `emotalker bake --ply` writes them."""
    from emotalker.bake.clip import ClipSpec, RunOptions, bake_clip
    from emotalker.core.audio.waveform import duration_frames, load_audio
    from emotalker.core.base.fileio import write_json
    from emotalker.core.models.bundle import AvatarBundle

    fps = float(AvatarBundle.open(avatar).manifest().get("fps") or 25.0)
    tracks = folder / "tracks.json"
    write_json(tracks, demo_tracks(duration_frames(len(load_audio(audio)), fps), fps))
    result = bake_clip(ClipSpec(avatar=str(avatar), audio=str(audio), out=str(folder), tracks=str(tracks), ply=True,
                                name="raw"), RunOptions(device="cpu", threads=threads, progress="none"))
    return [folder / f"raw_{f:06d}.ply" for f in range(result.frame_start, result.frame_end + 1)]


def as_gaussians(frame: PlyFrame):
    import torch

    from emotalker.core.render.gaussians import Gaussians

    raw = frame.raw()
    # A byte-quantised opacity of 0 or 255 decodes to a logit of -inf / +inf: the same alpha as +-30.
    raw["opacity_logits"] = np.clip(raw["opacity_logits"], -30.0, 30.0)
    return Gaussians(*(torch.as_tensor(raw[k], dtype=torch.float32)
                       for k in ("means", "quats", "log_scales", "opacity_logits", "sh")))


def write_all(frames: list, folder: Path) -> dict[str, dict]:
    """Each writer writes every frame to a new file, taking turns; -> name -> {bytes, seconds, paths}."""
    stats = {name: {"bytes": [], "seconds": 0.0, "paths": []} for name in WRITERS}
    for i, gaussians in enumerate(frames):
        order = list(WRITERS.items())
        for name, (encoding, degree, suffix) in order if i % 2 else order[::-1]:
            path = folder / f"{name}_{i:06d}{suffix}"
            started = time.perf_counter()
            size = write_frame(path, gaussians, encoding=encoding, sh_degree=degree)
            stats[name]["seconds"] += time.perf_counter() - started
            stats[name]["bytes"].append(size)
            stats[name]["paths"].append(path)
    return stats


def decoded_by_splat_transform(path: Path, folder: Path) -> PlyFrame:
    """The frame as splat-transform converts it to PLY, its columns put in our PLY's order (normals zero)."""
    out = folder / (path.name.replace(".", "_") + "_decoded.ply")
    run = subprocess.run(["node", str(SPLAT_TRANSFORM), "-q", "-w", str(path), str(out)], capture_output=True,
                         text=True, timeout=300)  # its SPZ decoder logs to stdout even with -q
    if run.returncode != 0:
        sys.exit(f"splat-transform could not convert {path}: {run.stderr.strip()}")
    decoded = read_ply(out)
    degree = {0: 0, 9: 1, 24: 2, 45: 3}[sum(n.startswith("f_rest_") for n in decoded.names)]
    names = ply_property_names(degree)
    zeros = np.zeros(len(decoded.rows), np.float32)
    return PlyFrame(names, np.stack([decoded.column(n) if n in decoded.names else zeros for n in names], axis=1))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def render_psnrs(avatar: Path, originals: list, stats: dict, picks: list[int], resolution: int,
                 folder: Path) -> dict[str, list[float]]:
    """name -> PSNR of the render of each picked frame as splat-transform decodes it, against the raw frame's."""
    import torch

    from emotalker.core.models.avatar import render_avatar
    from emotalker.core.models.bundle import AvatarBundle
    from emotalker.core.render.camera import front_camera
    from emotalker.core.rig.flame import FlameModel

    camera = front_camera(FlameModel.load(AvatarBundle.open(avatar).flame_path).v_template, resolution)

    def render(gaussians) -> np.ndarray:
        with torch.inference_mode():
            return render_avatar(gaussians, camera).rgb[0].numpy()

    out = {"spz": [], "cply": []}
    for i in picks:
        reference = render(originals[i])
        for name in out:
            out[name].append(psnr(reference, render(as_gaussians(decoded_by_splat_transform(stats[name]["paths"][i],
                                                                                                folder)))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--avatar", type=Path, default=DEMO_AVATAR, help="avatar bundle (default: the shipped demo)")
    parser.add_argument("--audio", type=Path, default=DEMO_SPEECH, help="dialogue audio (default: the demo speech)")
    parser.add_argument("--frames", type=int, default=125, help="frames to write (default 125, or the whole clip)")
    parser.add_argument("--psnr-frames", type=int, default=5, help="evenly spaced frames to decode and render")
    parser.add_argument("--resolution", type=int, default=512, help="render width and height for the PSNR")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    if shutil.which("node") is None or not SPLAT_TRANSFORM.is_file():
        sys.exit("needs node and `npm install --prefix build/npm @playcanvas/splat-transform` for the PSNR")
    scratch = Path(tempfile.mkdtemp(prefix="emotalker-export-")) if args.dir is None else args.dir
    (scratch / "raw").mkdir(parents=True, exist_ok=True)
    (scratch / "frames").mkdir(exist_ok=True)
    raw_paths = bake_raw(args.avatar, args.audio, scratch / "raw", args.threads)[:args.frames]
    originals = [as_gaussians(read_ply(p)) for p in raw_paths]
    stats = write_all(originals, scratch / "frames")
    picks = sorted({int(round(x)) for x in np.linspace(0, len(originals) - 1, args.psnr_frames)})
    psnrs = render_psnrs(args.avatar, originals, stats, picks, args.resolution, scratch)
    n = len(originals)
    figures = {"avatar": str(args.avatar), "frames": n, "gaussians": len(originals[0]),
               "sh_degree": originals[0].sh_degree, "load_average": os.getloadavg()[0]}
    for name, s in stats.items():
        figures[f"{name}_bytes_per_frame"] = float(np.mean(s["bytes"]))
        figures[f"{name}_write_fps"] = n / s["seconds"]
    for name in ("spz", "cply"):
        figures[f"{name}_ratio"] = figures["ply_sh3_bytes_per_frame"] / figures[f"{name}_bytes_per_frame"]
        figures[f"{name}_ratio_own_degree"] = figures["ply_bytes_per_frame"] / figures[f"{name}_bytes_per_frame"]
        figures[f"{name}_psnr"] = float(np.mean(psnrs[name]))
        figures[f"{name}_psnr_min"] = float(np.min(psnrs[name]))
    figures["psnr_frames"] = [int(i) + 1 for i in picks]
    print(f"{n} frames, {figures['gaussians']} Gaussians, SH degree {figures['sh_degree']}, "
          f"load average {figures['load_average']:.1f} (write speeds are indicative)")
    for name in WRITERS:
        line = f"  {name:<8} {figures[f'{name}_bytes_per_frame'] / 1e3:9.1f} kB/frame {figures[f'{name}_write_fps']:8.1f} frames/s"
        if name in psnrs:
            line += (f"   {figures[f'{name}_ratio']:5.1f}x smaller than SH3 PLY ({figures[f'{name}_ratio_own_degree']:.1f}x "
                     f"than own-degree PLY), PSNR {figures[f'{name}_psnr']:.1f} dB (min {figures[f'{name}_psnr_min']:.1f})")
        print(line)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if args.dir is None:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
