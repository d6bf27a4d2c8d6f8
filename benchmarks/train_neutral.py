"""Stage 1 quality and speed on the `default` sample dataset, on this machine.

Trains Gaussian blendshapes for a wall-clock budget (default 20 minutes of
training; evaluation pauses are not counted), then reports on the held-out
(test) clips: PSNR, SSIM and L1 over the whole image, inside the head and
inside the mouth box, the Gaussian count and the training time, and the
minutes the held-out curve took to reach 30 dB (`minutes_to_30db`). The
baseline in the same run is the untrained initialisation (albedo-coloured
Gaussians on the mesh). Also measures how fast the trained model evaluates
frames (what baking calls), one at a time and in batches.

    python benchmarks/train_neutral.py --json out.json [--dataset DIR] [--minutes 20]
        [--resolution 256] [--plot docs/img/stage1_psnr_curve.png]
        [--compare docs/img/stage1_heldout.png] [--out AVATAR]

Timings on a shared CPU are noisy; the JSON records the load average.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import emotalker  # noqa: E402,F401  (before torch: it sets OpenMP's wait policy, docs/renderer.md)
import torch  # noqa: E402
from emotalker.core.datasets.dataset import Dataset  # noqa: E402
from emotalker.core.evaluation.neutral import evaluate, render_neutral_frame  # noqa: E402
from emotalker.core.rig.flame import FlameParams  # noqa: E402
from emotalker.core.datasets.frames import FrameSet  # noqa: E402
from emotalker.core.training.budget import StepBudget  # noqa: E402
from emotalker.core.training.neutral import NeutralTrainer, TrainNeutralConfig, new_model  # noqa: E402
from emotalker.core.training.pipeline import TrainAllConfig  # noqa: E402
from emotalker.core.training.plan import plan_training  # noqa: E402


def evenly(n_total: int, n: int) -> list[int]:
    return np.unique(np.linspace(0, n_total - 1, min(n, n_total)).round().astype(int)).tolist()


def frames_per_second(model, batch: int, repeats: int = 5) -> float:
    """Frames a second of model evaluation (no rendering) for batches of `batch` random expressions."""
    g = torch.Generator().manual_seed(0)
    K = model.flame_model.n_expr
    p = FlameParams(expr=torch.randn(batch, K, generator=g), jaw=0.1 * torch.randn(batch, 3, generator=g),
                    neck=0.05 * torch.randn(batch, 3, generator=g), eyelids=torch.rand(batch, 2, generator=g))
    with torch.no_grad():
        model.evaluate(p)
        t = time.perf_counter()
        for _ in range(repeats):
            model.evaluate(p)
        return batch * repeats / (time.perf_counter() - t)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=str(Path(tempfile.gettempdir()) / "emotalker-sample-default"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--minutes", type=float, default=20.0, help="training wall-clock budget")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--gaussians", type=int, default=10000, help="initial face Gaussians")
    ap.add_argument("--max-gaussians", type=int, default=30000)
    ap.add_argument("--steps", type=int, default=0, help="fixed step count (default: fit the budget)")
    ap.add_argument("--eval-every", type=float, default=2.0, help="minutes between curve points")
    ap.add_argument("--curve-frames", type=int, default=8, help="held-out frames a curve point")
    ap.add_argument("--test-frames", type=int, default=120, help="held-out frames in the final evaluation")
    ap.add_argument("--delta-every", type=int, default=4, help="train the deltas every n-th step")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--plot", default=None, help="PNG of test PSNR over training time")
    ap.add_argument("--compare", default=None, help="PNG of ground truth beside renders, held-out frames")
    ap.add_argument("--out", default=None, help="keep the trained avatar's neutral.safetensors here")
    return ap.parse_args()


class BudgetedRun:
    """The trainer's per-step hook: records the held-out curve; evaluation pauses are left out of
    the time budget (the trainer's StepBudget, the one `--minutes` uses, fits the steps to it)."""

    def __init__(self, args: argparse.Namespace, test: FrameSet, curve_idx: list[int]):
        self.args, self.test, self.curve_idx = args, test, curve_idx
        self.budget = None if args.steps else StepBudget(args.minutes * 60)
        self.curve: list[dict] = []
        self.paused = 0.0
        self.next_eval = 0.0

    def __call__(self, tr: NeutralTrainer, stats) -> None:
        t = tr.state.seconds
        if t >= self.next_eval or tr.state.step == tr.cfg.steps:
            self.curve_point(tr, stats, t)

    def curve_point(self, tr: NeutralTrainer, stats, t: float) -> None:
        t0 = time.monotonic()
        m = evaluate(tr.model, self.test, self.curve_idx)
        recent = float(np.mean([h["psnr"] for h in tr.state.history[-10:]] or [stats["psnr"]]))
        minutes = (t - self.paused) / 60
        self.curve.append({"minutes": round(minutes, 3), "step": tr.state.step, "test_psnr": m["psnr"],
                           "n_gaussians": stats["n"], "train_psnr_recent": recent})
        print(f"  {minutes:6.2f} min  step {tr.state.step:6d}  test PSNR {m['psnr']:.2f} dB  n={stats['n']}", flush=True)
        self.next_eval = t + self.args.eval_every * 60
        self.paused += time.monotonic() - t0  # evaluation time is not training time
        if self.budget is not None:
            self.budget.exclude(time.monotonic() - t0)


def minutes_to(curve: list[dict], psnr: float) -> float | None:
    """Training minutes at which the held-out curve first reaches `psnr`, interpolated between its points
    (None if it never does; as fine as --eval-every)."""
    previous = {"minutes": 0.0, "test_psnr": -math.inf}
    for point in curve:
        if point["test_psnr"] >= psnr:
            if previous["test_psnr"] == -math.inf:
                return point["minutes"]
            f = (psnr - previous["test_psnr"]) / (point["test_psnr"] - previous["test_psnr"])
            return round(previous["minutes"] + f * (point["minutes"] - previous["minutes"]), 3)
        previous = point
    return None


def report(args, trainer: NeutralTrainer, run: BudgetedRun, train: FrameSet, test_idx: list[int],
           baseline: dict, train_seconds: float) -> dict:
    """The benchmark's figures for the trained model."""
    model, test = trainer.model, run.test
    final = evaluate(model, test, test_idx)
    train_eval = evaluate(model, train, evenly(len(train), 40))
    fps1 = frames_per_second(model, 1)
    fps25 = frames_per_second(model, 25)
    return {
        "dataset": str(args.dataset), "resolution": [train.width, train.height],
        "test_psnr": final["psnr"], "test_ssim": final["ssim"], "test_l1": final["l1"],
        "head_psnr": final["head_psnr"], "mouth_psnr": final["mouth_psnr"], "mouth_ssim": final["mouth_ssim"],
        "mouth_l1": final["mouth_l1"], "train_psnr": train_eval["psnr"], "test_frames": final["frames"],
        "n_gaussians": model.n_gaussians + model.n_teeth, "n_face_gaussians": model.n_gaussians,
        "n_teeth": model.n_teeth,
        "train_minutes": round(train_seconds / 60, 2), "minutes_to_30db": minutes_to(run.curve, 30.0),
        "steps": trainer.state.step, "planned_steps": trainer.cfg.steps,
        "ms_per_step": round(train_seconds / max(trainer.state.step, 1) * 1000, 1),
        "baseline_untrained": {"test_psnr": baseline["psnr"], "mouth_psnr": baseline["mouth_psnr"], "test_ssim": baseline["ssim"]},
        "eval_frames_per_second": {"batch_1": round(fps1, 1), "batch_25": round(fps25, 1)},
        "curve": run.curve, "load_average": os.getloadavg(), "torch_threads": torch.get_num_threads(),
        "goal": {"test_psnr_db": 37.8, "minutes": 12, "minutes_to_30db": 2.5, "max_gaussians": 30000},  # issue 19
    }


def plot_curve(path: str, curve: list[dict], n_curve_frames: int, train: FrameSet, n_total: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot([c["minutes"] for c in curve], [c["test_psnr"] for c in curve], "o-", label=f"held-out ({n_curve_frames} frames)")
    ax.plot([c["minutes"] for c in curve], [c["train_psnr_recent"] for c in curve], ".--", alpha=0.6, label="training frames (recent steps)")
    ax.axhline(30, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("training time (minutes, this CPU)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"Stage 1, {train.width}x{train.height}, {n_total} Gaussians", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def compare_image(path: str, model, test: FrameSet) -> None:
    """Ground truth beside the render for four held-out frames, in a 2x2 grid."""
    from PIL import Image

    rows = []
    for i in evenly(len(test), 4):
        frame, rgb, _ = render_neutral_frame(model, test, i)
        rows.append(torch.cat([frame.image, rgb], 1))
    grid = torch.cat([torch.cat(rows[:2], 1), torch.cat(rows[2:4], 1)], 0) if len(rows) == 4 else torch.cat(rows, 0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)).save(path)


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = Dataset.open(args.dataset)
    train = FrameSet(ds, [c.id for c in ds.split("train")], args.resolution)
    test = FrameSet(ds, [c.id for c in ds.split("test")], args.resolution)
    test_idx = evenly(len(test), args.test_frames)
    print(f"dataset {args.dataset}: {len(train)} train / {len(test)} test frames at {train.width}x{train.height}", flush=True)

    model = new_model(ds.flame_model(), args.gaussians)
    baseline = evaluate(model, test, test_idx)
    print(f"baseline (untrained init): test PSNR {baseline['psnr']:.2f} dB, mouth {baseline['mouth_psnr']:.2f} dB", flush=True)
    cfg = TrainNeutralConfig(steps=args.steps or 1, minutes=None if args.steps else args.minutes,
                             resolution=args.resolution, max_gaussians=args.max_gaussians,
                             checkpoint_every=10**9, delta_every=args.delta_every,
                             model=replace(model.config))
    if not args.steps:  # the CLI's plan: the first count from a probe; the StepBudget refits it while training
        plan = plan_training(args.dataset, TrainAllConfig(neutral=cfg), ["neutral"], "cpu", None)
        print("\n".join(plan.lines()), flush=True)
        cfg = replace(cfg, steps=plan.stages[0].steps)
    trainer = NeutralTrainer(model, train, cfg)
    run = BudgetedRun(args, test, evenly(len(test), args.curve_frames))
    trainer.run(on_step=run, budget=run.budget)
    train_seconds = trainer.state.seconds - run.paused
    model = trainer.model
    model.active_sh_degree = trainer.sh_degree_at(trainer.state.step)

    result = report(args, trainer, run, train, test_idx, baseline, train_seconds)
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.out:
        model.save(Path(args.out) / "neutral.safetensors", steps=trainer.state.step)
    if args.plot:
        plot_curve(args.plot, run.curve, len(run.curve_idx), train, result["n_gaussians"])
    if args.compare:
        compare_image(args.compare, model, test)
    return 0


if __name__ == "__main__":
    sys.exit(main())
