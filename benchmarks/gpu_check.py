"""The measured parts of benchmarks/gpu_check.sh, one JSON object each on stdout (docs/gpu.md).

    python benchmarks/gpu_check.py render --device cuda [--size 512 --gaussians 50000]
    python benchmarks/gpu_check.py train  --device cuda --seconds 120      # Stage 1 for a wall-clock budget
    python benchmarks/gpu_check.py train  --device cpu --steps N --seconds 60   # the same first N steps on CPU
    python benchmarks/gpu_check.py bake   --device cuda [--frames 125 --resolution 512]

`render`: benchmarks/render.py's head scene, forward and forward + backward, on `--device` with the
backend that device gets (gsplat on CUDA). `train`: Stage 1 (NeutralTrainer) on a teacher dataset
rendered here (tests/stage1_data.py: no Blender needed), the same seed and config on either device
(`delta_every` 1 on both, so a step is the same work); it stops at `--steps` or after `--seconds`
and reports the time at which each step ended, so CPU and CUDA compare over the same steps. `bake`: the
shipped demo avatar saying the demo line, PLY + PNG, on `--device`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the teacher dataset of the Stage 1 tests

import emotalker  # noqa: E402,F401  (before torch: it sets OpenMP's wait policy, docs/renderer.md)
import torch  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_ms(fn, device: str, repeats: int) -> float:
    fn()  # warm-up: kernels compiled or loaded
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return round(statistics.median(times), 2)


def render(args) -> dict:
    from render import _render, head_scene  # benchmarks/render.py's scene and call

    scene = {k: (v.to(args.device) if torch.is_tensor(v) else v) for k, v in head_scene(args.gaussians, args.size).items()}
    backend = "gsplat" if args.device.startswith("cuda") else "cpu"
    key = f"{args.size}_{args.gaussians // 1000}k"
    return {"render_backend": backend, f"render_fwd_ms_{key}": median_ms(lambda: _render(scene, backend, False),
                                                                         args.device, args.repeats),
            f"render_fwdbwd_ms_{key}": median_ms(lambda: _render(scene, backend, True), args.device, args.repeats)}


class _Budget(Exception):
    pass


def train(args) -> dict:
    from stage1_data import write_teacher_dataset

    from emotalker.core.datasets.dataset import Dataset
    from emotalker.core.datasets.frames import FrameSet
    from emotalker.core.models.blendshapes import GaussianBlendshapes
    from emotalker.core.training.neutral import NeutralTrainer, TrainNeutralConfig

    with tempfile.TemporaryDirectory(prefix="emotalker-gpu-check-") as tmp:
        ds = Dataset.open(write_teacher_dataset(Path(tmp), size=args.resolution, frames=args.frames))
        frames = FrameSet(ds, [c.id for c in ds.split("train")], args.resolution, device=args.device)
        cfg = TrainNeutralConfig(steps=args.plan_steps, delta_every=1, checkpoint_every=10**9)
        cfg = replace(cfg, model=replace(cfg.model, n_gaussians=args.gaussians))
        model = GaussianBlendshapes.initialize(ds.flame_model(), cfg.model)
        trainer = NeutralTrainer(model, frames, cfg, args.device)
        limit = args.steps or cfg.steps
        seconds_at_step = {}
        start = time.monotonic()

        def stop(tr, stats):
            seconds_at_step[tr.state.step] = round(time.monotonic() - start, 3)  # stats came back: the step is done
            if tr.state.step >= limit or time.monotonic() - start > args.seconds:
                raise _Budget

        try:
            trainer.run(on_step=stop)
        except _Budget:
            pass
        seconds = time.monotonic() - start
        return {"device": args.device, "steps": trainer.state.step, "seconds": round(seconds, 2),
                "steps_per_s": round(trainer.state.step / seconds, 2), "gaussians": trainer.model.n_gaussians,
                "psnr_last": round(trainer.state.history[-1]["psnr"], 2) if trainer.state.history else None,
                "seconds_at_step": seconds_at_step}


def bake(args) -> dict:
    from emotalker.bake.clip import ClipSpec, RunOptions, bake_clip

    data = ROOT / "emotalker" / "data"
    with tempfile.TemporaryDirectory(prefix="emotalker-gpu-bake-") as tmp:
        clip = ClipSpec(avatar=str(data / "demo_avatar"), audio=str(data / "demo_speech.wav"), out=tmp, ply=True,
                        png=True, emotion="happy", frames=f"1:{args.frames}", resolution=args.resolution)
        start = time.perf_counter()
        result = bake_clip(clip, RunOptions(device=args.device, progress="none"))
        seconds = time.perf_counter() - start
    return {"bake_device": args.device, "bake_frames": result.written, "bake_seconds": round(seconds, 2),
            "bake_fps": round(result.written / seconds, 2), "bake_resolution": args.resolution}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("render")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--gaussians", type=int, default=50_000)
    p.add_argument("--repeats", type=int, default=10)
    p = sub.add_parser("train")
    p.add_argument("--seconds", type=float, default=120.0, help="wall-clock budget")
    p.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: the budget alone)")
    p.add_argument("--plan-steps", type=int, default=30000, help="the schedule's length (densification, SH)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--frames", type=int, default=16, help="frames a clip of the teacher dataset")
    p.add_argument("--gaussians", type=int, default=10_000, help="initial face Gaussians")
    p = sub.add_parser("bake")
    p.add_argument("--frames", type=int, default=125)
    p.add_argument("--resolution", type=int, default=512)
    for p in sub.choices.values():
        p.add_argument("--device", default="cuda")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_check.py: --device cuda but torch sees no CUDA GPU")
    figures = {"render": render, "train": train, "bake": bake}[args.what](args)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
