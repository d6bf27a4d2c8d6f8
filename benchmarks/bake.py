"""Speed of the bake's exports, against plyfile's writer in the same run.

    python benchmarks/bake.py --json out.json
    python benchmarks/bake.py --eval-only --threads 2      # just the eval_fps figures

Figures (medians over repeats; the machine may be shared, so they are noisy):
  ply_write_mb_s            our PLY writer, 20,000 Gaussians, SH degree 3, y-up   (goal >= 200)
  ply_write_mb_s_deg0       the same at SH degree 0
  ply_write_mb_s_zup        SH degree 3 with the z-up conversion (rotates means, quats and SH)
  plyfile_mb_s[_deg0]       baseline: plyfile writing the same rows from a structured array
  plyfile_inria_mb_s        baseline: plyfile fed the way the INRIA 3DGS code does
                            (a list of per-Gaussian tuples), SH degree 3
  tracks_eval_frames_s      evaluating 8 bezier emotion channels + intensity per frame
  eval_fps                  per-frame Gaussian evaluation as the bake runs it (FrameProducer, chunks of 8
                            frames), 20,000 Gaussians: Stage 1 on the procedural head (50 blendshapes,
                            SH degree 1) + Stage 2 (default EmotionConfig, happy at intensity 2), CPU;
                            goal >= 100
  eval_fps_unbatched        baseline: the same, one frame a call (chunk 1)
  eval_fps_stage1           Stage 1 alone (what --no-emotion or a Stage-1-only avatar costs)
  render_fps_256            CPU render of those Gaussians, 256x256, front camera, to RGBA uint8
  bake_fps_ply              the whole per-frame loop (Stage 1 + 2, write PLY) as `emotalker bake --ply` runs it

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
from emotalker.core.base.emotions import EMOTIONS, MAX_INTENSITY, NEUTRAL, one_hot  # noqa: E402
from emotalker.core.render.gaussians import Gaussians  # noqa: E402


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


def stage1_avatar(n: int):
    """A Stage 1 model of n Gaussians (face + 300 teeth) on the procedural head, with random deltas
    (evaluation cost does not depend on the values)."""
    import torch

    from emotalker.core.models.blendshapes import BlendshapeConfig, GaussianBlendshapes
    from emotalker.core.head import make_head

    rig = make_head()
    model = GaussianBlendshapes.initialize(rig, BlendshapeConfig(n_gaussians=n - 600, n_blendshapes=50, sh_degree=1))
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for name in ("d_means", "d_quats", "d_log_scales", "d_opacity", "d_sh"):
            getattr(model, name).copy_(torch.randn(getattr(model, name).shape, generator=g) * 1e-3)
        model.opacity_logits.fill_(2.0)
    return rig, model.eval().requires_grad_(False)


def model_figures(n: int, repeats: int, eval_only: bool = False) -> dict:
    """eval_fps (chunked and one frame a call), render_fps_256 and the bake loop's frames/s with PLY writes
    (`eval_only`: the eval_fps figures alone)."""
    from emotalker.core.render.camera import front_camera
    from emotalker.bake.clip import render_rgba
    from emotalker.bake.engine import FlameCurves, FrameProducer

    import torch

    from emotalker.core.models.avatar import Avatar
    from emotalker.core.audio.features import AudioFeaturizer, FeatureConfig
    from emotalker.core.models.emotion_deformer import EmotionConfig, EmotionDeformer

    rig, model = stage1_avatar(n)
    features = FeatureConfig()
    audio_dim = features.window * AudioFeaturizer(features).dim
    torch.manual_seed(0)
    deformer = EmotionDeformer(EmotionConfig(n_gaussians=model.n_gaussians, audio_dim=audio_dim, features=features))
    with torch.no_grad():  # the heads start at zero; give them values so the offsets are real work
        for name, p in deformer.named_parameters():
            if "head" in name:
                p.normal_(0, 0.05)
    avatar = Avatar(model, deformer.eval().requires_grad_(False))
    T = 96
    rng = np.random.default_rng(0)
    z = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    curves = FlameCurves((rng.standard_normal((T, rig.n_expr)) * 0.5).astype(np.float32),
                         (np.abs(rng.standard_normal((T, 3))) * 0.1).astype(np.float32), z(T, 3), z(T, 6), z(T, 2),
                         one_hot([NEUTRAL] * T), z(T), 25.0, 1)
    windows = rng.standard_normal((T, audio_dim)).astype(np.float32)
    audio = lambda frames: windows[frames - 1]  # noqa: E731  (each timeline frame's window, as AudioWindows cuts)
    happy = one_hot(["happy"] * T)
    intensity = np.full(T, 2.0, np.float32)
    stage1_only = Avatar(model)
    out: dict[str, object] = {"n_gaussians_model": avatar.n_gaussians}

    def frames_per_second(chunk: int, frames: int, evaluated: Avatar = avatar) -> float:
        rates = []
        for _ in range(max(2, repeats // 5)):
            producer = FrameProducer(evaluated, curves, happy, intensity, z(T), chunk=chunk, audio=audio)
            t = time.perf_counter()
            for f in range(1, frames + 1):
                producer(f)
            rates.append(frames / (time.perf_counter() - t))
        return statistics.median(rates)

    frames_per_second(8, 8)  # warm-up
    out["eval_fps"] = frames_per_second(8, 64)
    out["eval_fps_unbatched"] = frames_per_second(1, 32)
    out["eval_fps_stage1"] = frames_per_second(8, 64, stage1_only)
    if eval_only:
        return out

    camera = front_camera(rig.v_template, 256)
    gaussians = FrameProducer(stage1_only, curves, curves.emotion_weights, curves.intensity, z(T), chunk=1)(1)
    seconds = timed(lambda i: render_rgba(gaussians, camera), max(3, repeats // 2))
    out["render_fps_256"] = 1.0 / statistics.median(seconds)

    with tempfile.TemporaryDirectory() as tmp:
        producer = FrameProducer(avatar, curves, happy, intensity, z(T), chunk=8, audio=audio)
        t = time.perf_counter()
        for f in range(1, 33):
            write_ply(Path(tmp) / f"f_{f:06d}.ply", producer(f))
        out["bake_fps_ply"] = 32 / (time.perf_counter() - t)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--n", type=int, default=20_000, help="Gaussians per frame")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dir", default=None, help="folder for the written files (default: a temp folder)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--eval-only", action="store_true", help="measure only the eval_fps figures")
    args = parser.parse_args()

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    figures: dict[str, object] = {}
    if args.eval_only:
        figures.update(model_figures(args.n, args.repeats, eval_only=True))
    else:
        figures.update(export_figures(args))
        figures.update(model_figures(args.n, args.repeats))
    figures["machine"] = {"torch_threads": __import__("torch").get_num_threads(), "python": platform.python_version(),
                          "cpu": platform.processor() or platform.machine(), "n_gaussians": args.n,
                          "repeats": args.repeats}

    width = max(len(k) for k in figures)
    for key, value in figures.items():
        shown = f"{value:.1f}" if isinstance(value, float) else ("not measured" if value is None else value)
        print(f"{key:<{width}}  {shown}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def export_figures(args) -> dict:
    """The PLY writer's MB/s against plyfile's, and the tracks' evaluation rate."""
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
        "intensity": {"keys": [[1 + 50 * i, (i * 0.7) % MAX_INTENSITY] for i in range(20)]}}})
    frames = np.arange(1, 1001)
    seconds = timed(lambda i: tracks.evaluate(frames), args.repeats)
    figures["tracks_eval_frames_s"] = len(frames) / statistics.median(seconds)
    return figures


if __name__ == "__main__":
    sys.exit(main())
