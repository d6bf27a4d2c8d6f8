"""Where a Stage 1 training step's time goes, phase by phase (benchmarks/train_neutral.py's setup).

    python benchmarks/train_step_profile.py [--dataset DIR] [--gaussians 14400] [--steps 24]
        [--threads 1] [--clock cpu]

Runs NeutralTrainer.train_step's work with timers around its parts: the frame (data),
the blendshape evaluation, the render (its kernels timed by name as in
benchmarks/render_phases.py), the losses, the backward pass (the renderer's kernels
in it, and the rest: the losses' and the blendshapes' backward through torch), the
optimiser step and the densification statistics. The model starts with
--gaussians face Gaussians (+ teeth), about the size a default run reaches
(15,000 in benchmarks/results/train_neutral_default.json). Nothing is densified.

Without the sample dataset (`emotalker make-sample --preset default`), --rig FILE (a
flame_model.npz, e.g. the sample's, which make-sample writes first) trains on synthetic
frames instead: random expressions seen by front_camera, a flat grey target image and the
initial model's own alpha as the mask. The step's cost does not depend on the images.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import emotalker  # noqa: E402,F401  (before torch: it sets OpenMP's wait policy, docs/renderer.md)
import torch  # noqa: E402
from benchmarks import render_phases as rp  # noqa: E402
from emotalker.core.datasets.dataset import Dataset  # noqa: E402
from emotalker.core.datasets.frames import FrameSet  # noqa: E402
from emotalker.core.models.avatar import render_avatar  # noqa: E402
from emotalker.core.training.losses import dssim, l1  # noqa: E402
from emotalker.core.training.neutral import (DELTA_PARAMS, NeutralTrainer, TrainNeutralConfig,  # noqa: E402
                                             new_model, position_lr)


class SyntheticFrames:
    """FrameSet's interface (len, get, background, width, height) over random expressions."""

    def __init__(self, flame_model, size: int, n: int = 64, seed: int = 0):
        from emotalker.core.render.camera import front_camera

        self.width = self.height = size
        self.background = torch.ones(3)
        cam = front_camera(flame_model.v_template, size)
        self.K, self.viewmat = torch.as_tensor(cam.K).float()[None], torch.as_tensor(cam.viewmat).float()[None]
        g = torch.Generator().manual_seed(seed)
        self.expr = torch.randn(n, flame_model.n_expr, generator=g) * 0.5
        self.jaw = torch.randn(n, 3, generator=g) * 0.05
        self.image = torch.full((size, size, 3), 0.5)
        self.mask = torch.ones(size, size, 1)

    def __len__(self) -> int:
        return len(self.expr)

    def get(self, i: int):
        from emotalker.core.datasets.frames import Frame
        from emotalker.core.rig.flame import FlameParams

        return Frame("synthetic", i, self.image, self.mask, FlameParams(expr=self.expr[i:i + 1], jaw=self.jaw[i:i + 1]),
                     self.K, self.viewmat)


def timed_step(tr: NeutralTrainer, clock, t: dict) -> None:
    """train_step's work (without densification) with each part's time added to t."""
    cfg, model = tr.cfg, tr.model
    step = tr.state.step
    mark = [clock()]

    def lap(name):
        now = clock()
        t[name] += now - mark[0]
        mark[0] = now

    model.active_sh_degree = tr.sh_degree_at(step)
    for group in tr.opt.param_groups:
        if group["name"] in ("means", "teeth_means"):
            group["lr"] = position_lr(step, cfg)
    train_deltas = step % max(cfg.delta_every, 1) == 0
    for name in DELTA_PARAMS:
        getattr(model, name).requires_grad_(train_deltas)
    frame = tr.frames.get(int(torch.randint(len(tr.frames), (1,), generator=tr.generator)))
    lap("data")
    g = model(frame.params)[0]
    lap("blendshapes fwd")
    rp._times.clear()
    out = render_avatar(g, frame.camera, tr.frames.background, cfg.backend)
    out.means2d.retain_grad()
    lap("render fwd")
    rgb, alpha = out.rgb[0], out.alpha[0]
    loss = (cfg.lambda_rgb * l1(rgb, frame.image) + cfg.lambda_dssim * dssim(rgb, frame.image)
            + cfg.lambda_alpha * ((alpha - frame.mask) ** 2).mean() + cfg.lambda_teeth * model.teeth_containment_loss())
    lap("losses fwd")
    tr.opt.zero_grad(set_to_none=True)
    before = sum(rp._times.values())
    loss.backward()
    kernels = sum(rp._times.values()) - before
    t["render bwd (kernels)"] += kernels
    mark[0] += kernels
    lap("backward, rest (losses, blendshapes, glue)")
    tr.opt.step()
    lap("optimiser")
    with torch.no_grad():
        n = model.n_gaussians
        gr = out.means2d.grad[0, :n].clone()
        visible = out.radii[0, :n] > 0
        tr.grad_accum += gr.norm(dim=-1) * visible
        tr.grad_count += visible.float()
        float(((rgb - frame.image) ** 2).mean())
    lap("densify stats, psnr")
    tr.state.step = step + 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default=str(Path(tempfile.gettempdir()) / "emotalker-sample-default"))
    ap.add_argument("--rig", help="flame_model.npz: synthetic frames when the dataset is not there")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--gaussians", type=int, default=14400)
    ap.add_argument("--steps", type=int, default=24, help="timed steps (after 4 warm-up steps)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rp._clock[0] = clock
    rp.install()
    if (Path(args.dataset) / "dataset.json").exists() or not args.rig:
        ds = Dataset.open(args.dataset)
        frames, flame = FrameSet(ds, [c.id for c in ds.split("train")], args.resolution), ds.flame_model()
    else:
        from emotalker.core.rig.flame import FlameModel

        flame = FlameModel.load(args.rig)
        frames = SyntheticFrames(flame, args.resolution)
    model = new_model(flame, args.gaussians)
    cfg = TrainNeutralConfig(steps=10**6, resolution=args.resolution, max_gaussians=10**6, checkpoint_every=10**9)
    tr = NeutralTrainer(model, frames, cfg)
    t: dict = collections.defaultdict(float)
    for _ in range(4):
        timed_step(tr, clock, collections.defaultdict(float))
    kernel_t: dict = collections.defaultdict(float)
    for _ in range(args.steps):
        rp._times.clear()
        timed_step(tr, clock, t)
        for k, v in rp._times.items():
            kernel_t[k] += v
    total = sum(t.values())
    print(f"{type(frames).__name__}: {args.steps} steps, {model.n_gaussians + model.n_teeth} Gaussians, "
          f"{frames.width}x{frames.height}, torch threads {torch.get_num_threads()}, {args.clock} time, load average {os.getloadavg()[0]:.1f}")
    for k, v in t.items():
        print(f"  {k:44s} {v / args.steps * 1e3:8.1f} ms  {100 * v / total:5.1f}%")
    print(f"  {'total':44s} {total / args.steps * 1e3:8.1f} ms")
    print("  renderer kernels inside (ms a step):", ", ".join(
        f"{k} {v / args.steps * 1e3:.1f}" for k, v in sorted(kernel_t.items()) if k != "bin"))
    assert math.isfinite(total)


if __name__ == "__main__":
    main()
