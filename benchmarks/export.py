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
  usd        OpenUSD (--usd, needs usd-core): each frame's samples as the bake writes them
             (emotalker.bake.usd), then the one .usdc of the clip assembled from them, the rig
             and the audio included; its write time is both

Figures: bytes a frame (mean) and frames written a second for each; spz_ratio
and cply_ratio = SH3 PLY bytes / that format's bytes (goal: SPZ >= 10); PSNR of
our renders (CPU, front camera, --resolution) of --psnr-frames evenly spaced
frames as PlayCanvas splat-transform decodes them against renders of the raw
frames (goal: SPZ >= 40 dB; mean and minimum over those frames). Decoding needs
node and `npm install --prefix build/npm @playcanvas/splat-transform`. USD:
usd_mb_per_frame = the .usdc's size / frames, usd_psnr = the same PSNR of the
splats usd-core reads back from it, and usd_psnr_half_positions = what it would
be with half-precision positions too (why positions stay float).
Write speeds are wall-clock on whatever else the machine runs: indicative only.
"""

from __future__ import annotations

import argparse
import importlib.util
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
from emotalker.bake.ply import PlyFrame, frame_rows, ply_property_names, read_ply, write_frame  # noqa: E402
from emotalker.bake.usd import samples_from_rows, write_samples  # noqa: E402

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
    raw = frame.raw()
    # A byte-quantised opacity of 0 or 255 decodes to a logit of -inf / +inf: the same alpha as +-30.
    raw["opacity_logits"] = np.clip(raw["opacity_logits"], -30.0, 30.0)
    return raw_gaussians(raw)


def raw_gaussians(raw: dict[str, np.ndarray]):
    import torch

    from emotalker.core.render.gaussians import Gaussians

    return Gaussians(*(torch.as_tensor(raw[k], dtype=torch.float32)
                       for k in ("means", "quats", "log_scales", "opacity_logits", "sh")))


def write_all(frames: list, folder: Path, usd: bool) -> dict[str, dict]:
    """Each writer writes every frame to a new file, taking turns (USD: the frame's samples, as the bake
    writes them); -> name -> {bytes, seconds, paths}."""
    writers = list(WRITERS.items()) + ([("usd", ("usd", None, ".npz"))] if usd else [])
    stats = {name: {"bytes": [], "seconds": 0.0, "paths": []} for name, _ in writers}
    for i, gaussians in enumerate(frames):
        for name, (encoding, degree, suffix) in writers if i % 2 else writers[::-1]:
            path = folder / (f"usd.usd-frames/usd_{i + 1:06d}.npz" if name == "usd" else f"{name}_{i:06d}{suffix}")
            started = time.perf_counter()
            if name == "usd":
                write_samples(path, samples_from_rows(frame_rows(gaussians, up_axis="y")))
                size = path.stat().st_size
            else:
                size = write_frame(path, gaussians, encoding=encoding, sh_degree=degree)
            stats[name]["seconds"] += time.perf_counter() - started
            stats[name]["bytes"].append(size)
            stats[name]["paths"].append(path)
    return stats


def assemble_usd(stats: dict, avatar: Path, audio: Path, raw: Path, folder: Path, n: int, first: PlyFrame) -> Path:
    """The clip's .usdc from the samples `write_all` wrote (timed into the usd writer's seconds)."""
    from emotalker.bake.engine import FlameCurves
    from emotalker.bake.usd import UsdClip, write_usd
    from emotalker.core.models.bundle import AvatarBundle
    from emotalker.core.rig.flame import FlameModel

    flame = FlameModel.load(AvatarBundle.open(avatar).flame_path)
    curves = FlameCurves.load(raw / "raw_flame.npz", flame.n_expr)
    started = time.perf_counter()
    path = write_usd(UsdClip(folder, "usd", (1, n), curves.fps, len(first.rows), first.sh_degree,
                             os.path.relpath(audio.resolve(), folder.resolve()), flame, curves))
    stats["usd"]["seconds"] += time.perf_counter() - started
    return path


def usd_read_back(path: Path, frame: int, half_positions: bool = False) -> dict[str, np.ndarray]:
    """Frame `frame` (1-based) of the .usdc as usd-core reads it, as raw Gaussians (`half_positions`: its
    positions rounded to half precision, as the positionsh attribute would hold them)."""
    from pxr import Usd

    stage = Usd.Stage.Open(str(path))  # held: a prim of a closed stage expires
    prim = stage.GetPrimAtPath("/usd/Splats")
    get = lambda name: np.asarray(prim.GetAttribute(name).Get(float(frame)), np.float64)  # noqa: E731
    means = get("positions")
    opacity = np.clip(get("opacitiesh"), 1e-7, 1 - 1e-7)
    n = len(means)
    return {"means": means.astype(np.float16).astype(np.float64) if half_positions else means,
            "quats": get("orientationsh")[:, [3, 0, 1, 2]], "log_scales": np.log(np.maximum(get("scalesh"), 1e-30)),
            "opacity_logits": np.log(opacity / (1 - opacity)),
            "sh": get("radiance:sphericalHarmonicsCoefficientsh").reshape(n, -1, 3)}


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
                 folder: Path, usd: Path | None) -> dict[str, list[float]]:
    """name -> PSNR of the render of each picked frame as splat-transform decodes it (USD: as usd-core reads it
    back), against the raw frame's."""
    import torch

    from emotalker.core.models.avatar import render_avatar
    from emotalker.core.models.bundle import AvatarBundle
    from emotalker.core.render.camera import front_camera
    from emotalker.core.rig.flame import FlameModel

    camera = front_camera(FlameModel.load(AvatarBundle.open(avatar).flame_path).v_template, resolution)

    def render(gaussians) -> np.ndarray:
        with torch.inference_mode():
            return render_avatar(gaussians, camera).rgb[0].numpy()

    out = {"spz": [], "cply": []} | ({"usd": [], "usd_half_positions": []} if usd is not None else {})
    for i in picks:
        reference = render(originals[i])
        for name in ("spz", "cply"):
            out[name].append(psnr(reference, render(as_gaussians(decoded_by_splat_transform(stats[name]["paths"][i],
                                                                                                folder)))))
        if usd is not None:
            for name, half in (("usd", False), ("usd_half_positions", True)):
                out[name].append(psnr(reference, render(raw_gaussians(usd_read_back(usd, i + 1, half)))))
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
    (scratch / "frames" / "usd.usd-frames").mkdir(parents=True, exist_ok=True)
    raw_paths = bake_raw(args.avatar, args.audio, scratch / "raw", args.threads)[:args.frames]
    originals = [as_gaussians(read_ply(p)) for p in raw_paths]
    n = len(originals)
    usd = importlib.util.find_spec("pxr") is not None
    if not usd:
        print("usd-core is not installed (the usd extra): no USD figures")
    stats = write_all(originals, scratch / "frames", usd)
    usd_path = assemble_usd(stats, args.avatar, args.audio, scratch / "raw", scratch / "frames", n,
                            read_ply(raw_paths[0])) if usd else None
    picks = sorted({int(round(x)) for x in np.linspace(0, len(originals) - 1, args.psnr_frames)})
    psnrs = render_psnrs(args.avatar, originals, stats, picks, args.resolution, scratch, usd_path)
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
    if usd:
        figures["usd_bytes_per_frame"] = usd_path.stat().st_size / n
        figures["usd_mb_per_frame"] = figures["usd_bytes_per_frame"] / 1e6
        figures["usd_ratio"] = figures["ply_sh3_bytes_per_frame"] / figures["usd_bytes_per_frame"]
        figures["usd_write_fps"] = n / stats["usd"]["seconds"]  # the samples and the assembly
        for name in ("usd", "usd_half_positions"):
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
    if usd:
        print(f"  usd      {figures['usd_mb_per_frame'] * 1e3:9.1f} kB/frame {figures['usd_write_fps']:8.1f} frames/s"
              f"   {figures['usd_ratio']:5.1f}x smaller than SH3 PLY, PSNR {figures['usd_psnr']:.1f} dB "
              f"(min {figures['usd_psnr_min']:.1f}; half positions too: {figures['usd_half_positions_psnr']:.1f} dB)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if args.dir is None:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
