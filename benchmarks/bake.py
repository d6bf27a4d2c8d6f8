"""Speed of the bake's exports, against plyfile's writer in the same run.

    python benchmarks/bake.py --json out.json

Figures (medians over repeats; the machine may be shared, so they are noisy):
  ply_write_mb_s            our PLY writer, 20,000 Gaussians, SH degree 3, y-up   (goal >= 200)
  ply_write_mb_s_deg0       the same at SH degree 0
  ply_write_mb_s_zup        SH degree 3 with the z-up conversion (rotates means, quats and SH)
  plyfile_mb_s[_deg0]       baseline: plyfile writing the same rows from a structured array
  plyfile_inria_mb_s        baseline: plyfile fed the way the INRIA 3DGS code does
                            (a list of per-Gaussian tuples), SH degree 3
  tracks_eval_frames_s      evaluating 8 bezier emotion channels + intensity per frame
  eval_fps                  per-frame Gaussian evaluation (Stage 1 + Stage 2), 20,000 Gaussians, CPU:
                            null until the model exists (see TODO below)
  render_fps_256            CPU render, 256x256: null until bake renders through the model (TODO below)

MB/s counts the bytes of the file (header + rows). Files go to --dir (default
the system temp folder, which may be memory-backed: then the figures measure
the writer rather than the disk).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emotalker.bake.ply import gaussian_rows, ply_property_names, write_ply  # noqa: E402
from emotalker.bake.tracks import Tracks  # noqa: E402
from emotalker.core.bundle import EMOTIONS  # noqa: E402
from emotalker.core.gaussians import Gaussians  # noqa: E402


def random_gaussians(n: int, degree: int, seed: int = 0) -> Gaussians:
    import torch

    g = torch.Generator().manual_seed(seed)
    return Gaussians(torch.randn(n, 3, generator=g) * 0.1, torch.randn(n, 4, generator=g),
                     torch.randn(n, 3, generator=g) - 4, torch.randn(n, generator=g),
                     torch.randn(n, (degree + 1) ** 2, 3, generator=g))


def timed(fn, repeats: int) -> list[float]:
    """Seconds per call of fn(i) for i = 1..repeats, after one warm-up call fn(0)."""
    fn(0)  # warm-up (page cache, imports)
    out = []
    for i in range(1, repeats + 1):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def interleaved_writes(folder: Path, writers: dict, repeats: int) -> dict[str, tuple[int, list[float]]]:
    """Time each writer(path) on a new file per repeat, as a bake writes one new file per frame.

    The writers take turns within each repeat, so a burst of disk write-back or
    of another process's load hits them alike; each file is deleted after it is
    timed, so the dirty page cache stays small. Returns name -> (file size, seconds).
    """
    seconds = {name: [] for name in writers}
    sizes = {}
    for i in range(repeats + 1):
        order = list(writers.items())
        for name, write in order if i % 2 else order[::-1]:
            path = folder / f"{name}_{i:06d}.ply"
            t = time.perf_counter()
            write(path)
            elapsed = time.perf_counter() - t
            if i:  # repeat 0 warms up
                seconds[name].append(elapsed)
            sizes[name] = path.stat().st_size
            path.unlink()
    return {name: (sizes[name], seconds[name]) for name in writers}


def plyfile_structured(path: Path, g: Gaussians, degree: int) -> None:
    """Baseline: the same rows as a structured array, written by plyfile."""
    from plyfile import PlyData, PlyElement

    arrays = [getattr(g, f).numpy() for f in ("means", "quats", "log_scales", "opacity_logits", "sh")]
    rows = gaussian_rows(*arrays, sh_degree=degree)
    dtype = [(name, "<f4") for name in ply_property_names(degree)]
    PlyData([PlyElement.describe(rows.view(dtype).reshape(-1), "vertex")]).write(str(path))


def plyfile_inria(path: Path, g: Gaussians, degree: int) -> None:
    """Baseline: plyfile fed as the INRIA 3DGS save_ply does (concatenate, then a list of tuples)."""
    from plyfile import PlyData, PlyElement

    n = len(g)
    sh = g.sh[:, : (degree + 1) ** 2].numpy()
    attributes = np.concatenate([g.means.numpy(), np.zeros((n, 3), np.float32), sh[:, 0],
                                 sh[:, 1:].transpose(0, 2, 1).reshape(n, -1), g.opacity_logits.numpy()[:, None],
                                 g.log_scales.numpy(), g.quats.numpy()], axis=1)
    elements = np.empty(n, dtype=[(name, "f4") for name in ply_property_names(degree)])
    elements[:] = list(map(tuple, attributes))
    PlyData([PlyElement.describe(elements, "vertex")]).write(str(path))


def mb_s(size_and_seconds: tuple[float, list[float]]) -> float:
    size, seconds = size_and_seconds
    return size / statistics.median(seconds) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--n", type=int, default=20_000, help="Gaussians per frame")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dir", default=None, help="folder for the written files (default: a temp folder)")
    args = parser.parse_args()

    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        for degree, suffix in ((3, ""), (0, "_deg0")):
            g = random_gaussians(args.n, degree)
            writers = {"ours": lambda p: write_ply(p, g), "plyfile": lambda p: plyfile_structured(p, g, degree)}
            if degree == 3:
                writers["zup"] = lambda p: write_ply(p, g, up_axis="z")
            results = interleaved_writes(tmp, writers, args.repeats)
            figures[f"ply_write_mb_s{suffix}"] = mb_s(results["ours"])
            figures[f"plyfile_mb_s{suffix}"] = mb_s(results["plyfile"])
            if degree == 3:
                figures["ply_write_mb_s_zup"] = mb_s(results["zup"])
            # Same bytes as plyfile writes (and as the INRIA-style feeding below): the layout is the standard one.
            write_ply(tmp / "ours.ply", g)
            plyfile_structured(tmp / "plyfile.ply", g, degree)
            ours = (tmp / "ours.ply").read_bytes()
            figures[f"identical_to_plyfile{suffix}"] = ours == (tmp / "plyfile.ply").read_bytes()
            figures[f"frame_mb{suffix}"] = len(ours) / 1e6
            if degree == 3:
                slow = interleaved_writes(tmp, {"inria": lambda p: plyfile_inria(p, g, 3)}, max(3, args.repeats // 5))
                figures["plyfile_inria_mb_s"] = mb_s(slow["inria"])
                plyfile_inria(tmp / "inria.ply", g, 3)
                figures["identical_to_plyfile_inria"] = ours == (tmp / "inria.ply").read_bytes()

    tracks = Tracks.from_dict({"format": "emotalker-tracks/1", "fps": 25, "tracks": {
        **{f"emotion.{e}": {"keys": [[1 + 37 * i, (i * 0.37 + j * 0.11) % 1.0] for i in range(30)]}
           for j, e in enumerate(EMOTIONS)},
        "intensity": {"keys": [[1 + 50 * i, (i * 0.7) % 3.0] for i in range(20)]}}})
    frames = np.arange(1, 1001)
    seconds = timed(lambda i: tracks.evaluate(frames), args.repeats)
    figures["tracks_eval_frames_s"] = len(frames) / statistics.median(seconds)

    # TODO(model): eval_fps = frames per second of (FLAME params -> Stage 1 + Stage 2 Gaussians)
    # for 20,000 Gaussians on CPU, once Stage 1 (branch stage1) and Stage 2 expose per-frame evaluation.
    figures["eval_fps"] = None
    # TODO(model): render_fps_256 = frames per second of rasterize(...) at 256x256 on CPU for the baked
    # Gaussians, once bake renders PNG frames through the renderer (branch render).
    figures["render_fps_256"] = None
    figures["not_measured"] = ["eval_fps", "render_fps_256"]
    figures["machine"] = {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                          "n_gaussians": args.n, "repeats": args.repeats}

    width = max(len(k) for k in figures)
    for key, value in figures.items():
        shown = f"{value:.1f}" if isinstance(value, float) else ("not measured" if value is None else value)
        print(f"{key:<{width}}  {shown}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
