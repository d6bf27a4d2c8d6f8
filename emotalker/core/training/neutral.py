"""Stage 1 training: fit Gaussian blendshapes to a dataset's tracked frames.

One training frame a step; loss lambda_rgb L1 + lambda_dssim D-SSIM +
lambda_alpha mean((alpha - mask)^2) + a soft teeth-containment term; Adam
(eps 1e-15) with the per-attribute learning rates of GaussianBlendshapes;
densify (clone small, split large) and prune on the accumulated screen-space
gradient; the SH degree raised on a schedule. Checkpoints are written
atomically and carry everything needed to continue exactly: model, optimiser
moments, densification statistics, RNG state and the metric history.

    train_neutral(dataset, avatar_dir, TrainNeutralConfig(...))

is the whole stage: the model into the bundle, its checkpoint at
`bundle.checkpoint_path("neutral")` every `checkpoint_every` steps, at the end (kept, so a
finished run can train further) and on a cancel (a progress sink raising StopRequested).
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from emotalker.core.models.blendshapes import GAUSSIAN_PARAMS, BlendshapeConfig, GaussianBlendshapes
from emotalker.core.base.config import from_dict, to_dict
from emotalker.core.base.errors import InputError
from emotalker.core.base.progress import StopRequested
from emotalker.core.models.avatar import render_avatar
from emotalker.core.datasets.frames import FrameSet
from emotalker.core.training.losses import dssim, l1
from emotalker.core.base.quaternion import quat_to_matrix

CHECKPOINT_FORMAT = "emotalker-neutral-checkpoint/1"
DELTA_PARAMS = ("d_means", "d_quats", "d_log_scales", "d_opacity", "d_sh")


@dataclass
class TrainNeutralConfig:
    """Stage 1's training run. Step-valued densification settings scale with `steps` when
    left at None: densify from 5% to 50% of the run (the paper: 500 and 15k of 40k)."""

    steps: int = 30000
    """Training steps, one frame each."""
    minutes: float | None = None
    """Fit `steps` to this wall-clock budget in minutes, loading and evaluation included (None: train `steps`)."""
    resolution: int | None = None
    """Train at this size of the longer image side (None: the dataset's)."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Background colour the renders are composited on, linear RGB."""
    model: BlendshapeConfig = field(default_factory=BlendshapeConfig)
    """The model to initialise (a resumed run keeps its checkpoint's)."""
    max_gaussians: int = 30000
    """Cap on densification, teeth included."""
    lambda_rgb: float = 1.0
    """Weight of the L1 colour loss."""
    lambda_dssim: float = 0.25
    """Weight of the D-SSIM loss."""
    lambda_alpha: float = 10.0
    """Weight of the squared error between the rendered alpha and the mask."""
    lambda_teeth: float = 0.01
    """Weight of the term keeping the teeth inside the mouth."""
    lr_means: float = 1.6e-4
    """Learning rate of the positions at the start (decays exponentially to lr_means_final)."""
    lr_means_final: float = 1.6e-6
    """Learning rate of the positions at the last step."""
    lr_sh_dc: float = 2.5e-3
    """Learning rate of the base colour (SH DC)."""
    lr_sh_rest: float = 1.25e-4
    """Learning rate of the higher SH bands."""
    lr_opacity: float = 0.05
    """Learning rate of the opacity logits."""
    lr_scale: float = 5e-3
    """Learning rate of the log-scales."""
    lr_rotation: float = 1e-3
    """Learning rate of the rotations."""
    lr_d_means: float = 3.2e-7
    """Learning rate of the blendshape position deltas."""
    lr_d_sh: float = 1.25e-3
    """Learning rate of the blendshape colour deltas."""
    lr_d_opacity: float = 5e-5
    """Learning rate of the blendshape opacity deltas."""
    lr_d_scale: float = 5e-4
    """Learning rate of the blendshape log-scale deltas."""
    lr_d_rotation: float = 1e-4
    """Learning rate of the blendshape rotation deltas."""
    densify_from: int | None = None
    """First step of densification (None: 5% of the run, at most 500)."""
    densify_until: int | None = None
    """Last step of densification (None: half the run, at most 15000)."""
    densify_every: int = 100
    """Steps between densifications."""
    grad_threshold: float = 2e-4
    """Densify Gaussians whose mean |d loss / d means2d| (NDC units: pixels x size / 2) reaches this."""
    percent_dense: float = 0.01
    """Clone Gaussians below, split those above this fraction of the head's extent."""
    prune_opacity: float = 0.005
    """Prune Gaussians less opaque than this."""
    sh_increase_every: int | None = None
    """Steps between raising the active SH degree (None: an eighth of the run, at most 1000)."""
    delta_every: int = 0
    """Train the blendshape deltas every n-th step (0: 4 on CPU, which saves most of their cost; 1 on CUDA)."""
    checkpoint_every: int = 500
    """Steps between checkpoints."""
    eval_frames: int = 40
    """Test frames evaluated at the end (0 skips)."""
    seed: int = 0
    """Seed of the frame order and of the splits' noise."""
    backend: str = "auto"
    """Rasterizer backend (auto, cpu, gsplat)."""

    def resolved(self, device="cpu") -> "TrainNeutralConfig":
        """A copy with the step-valued and device-valued defaults filled in for this run."""
        c = replace(self, background=tuple(self.background))
        c.densify_from = c.densify_from if c.densify_from is not None else min(500, max(1, c.steps // 20))
        c.densify_until = c.densify_until if c.densify_until is not None else min(15000, c.steps // 2)
        c.sh_increase_every = c.sh_increase_every or min(1000, max(1, c.steps // 8))
        c.delta_every = c.delta_every or (1 if torch.device(device).type == "cuda" else 4)
        return c


@dataclass
class TrainState:
    """What changes during training besides the model and optimiser."""

    step: int = 0
    history: list = field(default_factory=list)  # [{"step", "loss", "psnr", "seconds", "n"}]
    seconds: float = 0.0


def build_optimizer(model: GaussianBlendshapes, cfg: TrainNeutralConfig) -> torch.optim.Adam:
    """Adam with one named group a parameter, learning rates as in GaussianBlendshapes."""
    lrs = {"means": cfg.lr_means, "quats": cfg.lr_rotation, "log_scales": cfg.lr_scale, "opacity_logits": cfg.lr_opacity,
           "sh_dc": cfg.lr_sh_dc, "sh_rest": cfg.lr_sh_rest, "d_means": cfg.lr_d_means, "d_quats": cfg.lr_d_rotation,
           "d_log_scales": cfg.lr_d_scale, "d_opacity": cfg.lr_d_opacity, "d_sh": cfg.lr_d_sh,
           "teeth_means": cfg.lr_means, "teeth_quats": cfg.lr_rotation, "teeth_log_scales": cfg.lr_scale,
           "teeth_opacity_logits": cfg.lr_opacity, "teeth_sh_dc": cfg.lr_sh_dc, "teeth_sh_rest": cfg.lr_sh_rest}
    groups = [{"params": [getattr(model, name)], "lr": lr, "name": name} for name, lr in lrs.items()]
    # The fused kernel is ~6x faster than the default on CPU (the deltas are millions of values).
    return torch.optim.Adam(groups, eps=1e-15, fused=True)


def position_lr(step: int, cfg: TrainNeutralConfig) -> float:
    """Exponential decay from lr_means to lr_means_final over the run."""
    t = min(max(step / max(cfg.steps, 1), 0.0), 1.0)
    return math.exp((1 - t) * math.log(cfg.lr_means) + t * math.log(cfg.lr_means_final))


def reindex_optimizer(opt: torch.optim.Adam, model: GaussianBlendshapes, index: torch.Tensor, is_new: torch.Tensor) -> None:
    """After `model.gather(index)`: point the optimiser at the new parameters and gather their
    Adam moments the same way (zero for newly created Gaussians)."""
    for group in opt.param_groups:
        if group["name"] not in GAUSSIAN_PARAMS:
            continue
        old, new = group["params"][0], getattr(model, group["name"])
        state = opt.state.pop(old, None)
        group["params"][0] = new
        if state:
            for key in ("exp_avg", "exp_avg_sq"):
                moved = state[key][index].clone()
                moved[is_new] = 0
                state[key] = moved
            opt.state[new] = state


class NeutralTrainer:
    """Owns the model, optimiser, data and state of one Stage 1 run; `run()` trains to cfg.steps."""

    def __init__(self, model: GaussianBlendshapes, frames: FrameSet, cfg: TrainNeutralConfig, device="cpu"):
        self.model = model.to(device)
        self.frames = frames
        self.schedule = replace(cfg, model=model.config)  # the model's own, e.g. from a checkpoint
        self.cfg = self.schedule.resolved(device)
        self.device = torch.device(device)
        self.opt = build_optimizer(self.model, self.cfg)
        self.state = TrainState()
        self.generator = torch.Generator().manual_seed(self.cfg.seed)
        n = model.n_gaussians
        self.grad_accum = torch.zeros(n, device=device)
        self.grad_count = torch.zeros(n, device=device)
        with torch.no_grad():
            v = torch.as_tensor(model.flame_model.v_template)
            self.extent = float((v.max(0).values - v.min(0).values).norm())
        if self.cfg.max_gaussians < model.n_gaussians + model.n_teeth:
            raise ValueError(f"max_gaussians {self.cfg.max_gaussians} is below the initial "
                             f"{model.n_gaussians + model.n_teeth} Gaussians")

    # ------------------------------------------------------------------ one step

    def set_steps(self, steps: int) -> None:
        """Train to `steps` instead: the step-valued settings left at None follow the new count."""
        self.cfg = replace(self.schedule, steps=steps).resolved(self.device)

    def sh_degree_at(self, step: int) -> int:
        return min(self.model.config.sh_degree, step // self.cfg.sh_increase_every)

    def train_step(self) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        step = self.state.step
        model.active_sh_degree = self.sh_degree_at(step)
        for group in self.opt.param_groups:
            if group["name"] in ("means", "teeth_means"):
                group["lr"] = position_lr(step, cfg)
        # Off steps leave the deltas out of autograd: the forward uses their cached masked
        # product and the backward and Adam skip them.
        train_deltas = step % max(cfg.delta_every, 1) == 0
        for name in DELTA_PARAMS:
            getattr(model, name).requires_grad_(train_deltas)
        i = int(torch.randint(len(self.frames), (1,), generator=self.generator))
        frame = self.frames.get(i)
        g = model(frame.params)[0]
        out = render_avatar(g, frame.camera, self.frames.background, cfg.backend)
        out.means2d.retain_grad()
        rgb, alpha = out.rgb[0], out.alpha[0]
        loss_rgb = l1(rgb, frame.image)
        loss_ssim = dssim(rgb, frame.image) if cfg.lambda_dssim else rgb.new_zeros(())
        loss_alpha = ((alpha - frame.mask) ** 2).mean()
        loss = (cfg.lambda_rgb * loss_rgb + cfg.lambda_dssim * loss_ssim + cfg.lambda_alpha * loss_alpha
                + cfg.lambda_teeth * model.teeth_containment_loss())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        n = model.n_gaussians
        if cfg.densify_from <= step < cfg.densify_until and out.means2d.grad is not None:
            with torch.no_grad():
                gr = out.means2d.grad[0, :n].clone()
                gr[:, 0] *= self.frames.width / 2
                gr[:, 1] *= self.frames.height / 2
                visible = out.radii[0, :n] > 0
                if visible.ndim > 1:
                    visible = visible.any(-1)
                self.grad_accum += gr.norm(dim=-1) * visible
                self.grad_count += visible.float()
        self.state.step = step + 1
        if (cfg.densify_from < self.state.step <= cfg.densify_until and self.state.step % cfg.densify_every == 0):
            self.densify_and_prune()
        with torch.no_grad():
            mse = float(((rgb - frame.image) ** 2).mean())
        return {"loss": float(loss.detach()), "psnr": 10 * math.log10(1 / max(mse, 1e-12)), "n": n + model.n_teeth}

    # ------------------------------------------------------------------ densify / prune

    @torch.no_grad()
    def densify_and_prune(self) -> None:
        cfg, model = self.cfg, self.model
        n = model.n_gaussians
        grads = self.grad_accum / self.grad_count.clamp_min(1)
        big = model.log_scales.exp().max(-1).values > cfg.percent_dense * self.extent
        cand = grads >= cfg.grad_threshold
        prune = torch.sigmoid(model.opacity_logits) < cfg.prune_opacity
        cand &= ~prune
        budget = cfg.max_gaussians - model.n_teeth - (n - int(prune.sum()))
        if int(cand.sum()) > budget:  # keep the strongest gradients within --max-gaussians
            keep_n = max(budget, 0)
            order = torch.argsort(torch.where(cand, grads, torch.full_like(grads, -1.0)), descending=True)
            cand = torch.zeros_like(cand)
            cand[order[:keep_n]] = True
        clone, split = cand & ~big, cand & big
        all_idx = torch.arange(n, device=grads.device)
        keep_idx = all_idx[~prune & ~split]
        clone_idx, split_idx = all_idx[clone], all_idx[split]
        index = torch.cat([keep_idx, clone_idx, split_idx, split_idx])
        is_new = torch.zeros(len(index), dtype=torch.bool, device=grads.device)
        is_new[len(keep_idx):] = True
        model.gather(index)
        reindex_optimizer(self.opt, model, index, is_new)
        if len(split_idx):
            # Two children drawn from the parent's canonical distribution, each 1.6x smaller.
            rows = slice(len(keep_idx) + len(clone_idx), len(index))
            s = model.log_scales[rows].exp()
            R = quat_to_matrix(model.quats[rows])
            noise = torch.randn(s.shape, generator=self.generator).to(s) * s
            model.means[rows] += (R @ noise[..., None])[..., 0]
            model.log_scales[rows] -= math.log(1.6)
        self.grad_accum = torch.zeros(len(index), device=grads.device)
        self.grad_count = torch.zeros(len(index), device=grads.device)

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, path: str | Path) -> None:
        """Everything to continue this run, atomically (safetensors + JSON metadata; no pickle)."""
        from emotalker.core.base.fileio import save_tensors

        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        for group in self.opt.param_groups:
            st = self.opt.state.get(group["params"][0])
            if st:
                for key in ("exp_avg", "exp_avg_sq"):
                    tensors[f"opt.{group['name']}.{key}"] = st[key]
                tensors[f"opt.{group['name']}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
        tensors["train.grad_accum"] = self.grad_accum
        tensors["train.grad_count"] = self.grad_count
        tensors["train.rng"] = self.generator.get_state()
        tensors["train.torch_rng"] = torch.get_rng_state()
        meta = {"format": CHECKPOINT_FORMAT, "model": self.model.metadata(), "train": to_dict(self.cfg),
                "state": to_dict(self.state)}
        save_tensors(path, tensors, meta)

    @classmethod
    def from_checkpoint(cls, path: str | Path, flame_model, frames: FrameSet, cfg: TrainNeutralConfig, device="cpu") -> "NeutralTrainer":
        """Rebuild a trainer from `save_checkpoint`; InputError naming the file when it does not fit.

        `cfg.steps` may differ from the checkpoint's (to train further); the rest comes from the file.
        """
        from emotalker.core.base.fileio import load_tensors

        tensors, meta = load_tensors(path)
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise InputError(path, f"not a Stage 1 checkpoint (format {meta.get('format')!r})")
        saved = meta["train"]
        for key in ("resolution", "background"):
            mine = list(getattr(cfg, key)) if key == "background" else getattr(cfg, key)
            if saved.get(key) != mine:
                raise InputError(path, f"checkpoint was trained with {key}={saved.get(key)!r}, not {mine!r}; "
                                       "start a new run (without --resume) to change it")
        model_t = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        model = GaussianBlendshapes.from_tensors(model_t, meta["model"], flame_model, path)
        # The model's config comes from its own metadata; `model` in "train" is only a record
        # (absent from checkpoints written before it existed).
        known = {f.name for f in fields(TrainNeutralConfig)} - {"model"}
        train_cfg = from_dict(TrainNeutralConfig, {k: v for k, v in saved.items() if k in known}, path)
        train_cfg = replace(train_cfg, steps=cfg.steps, minutes=cfg.minutes, max_gaussians=cfg.max_gaussians,
                            backend=cfg.backend, eval_frames=cfg.eval_frames)
        trainer = cls(model, frames, train_cfg, device)
        for group in trainer.opt.param_groups:
            name = group["name"]
            if f"opt.{name}.exp_avg" in tensors:
                trainer.opt.state[group["params"][0]] = {
                    "step": tensors[f"opt.{name}.step"].reshape(()).clone(),
                    "exp_avg": tensors[f"opt.{name}.exp_avg"].to(device),
                    "exp_avg_sq": tensors[f"opt.{name}.exp_avg_sq"].to(device),
                }
        trainer.grad_accum = tensors["train.grad_accum"].to(device)
        trainer.grad_count = tensors["train.grad_count"].to(device)
        trainer.generator.set_state(tensors["train.rng"])
        torch.set_rng_state(tensors["train.torch_rng"])
        trainer.state = TrainState(**meta["state"])
        return trainer

    # ------------------------------------------------------------------ loop

    def run(self, checkpoint: str | Path | None = None, progress=None, on_step=None, budget=None) -> TrainState:
        """Train from the current step to cfg.steps; checkpoint every cfg.checkpoint_every steps
        and at the end. `progress`: a Progress (update per step); `on_step(trainer, stats)`:
        a hook called after each step (evaluation curves, tests that stop a run); `budget`: a
        StepBudget that refits cfg.steps as the run goes."""
        t0 = time.monotonic() - self.state.seconds
        try:
            while self.state.step < self.cfg.steps:
                with denormals_flushed():
                    stats = self.train_step()
                self.state.seconds = time.monotonic() - t0
                if budget is not None and (steps := budget.follow(self.state.step, self.cfg.steps, progress)) is not None:
                    self.set_steps(steps)
                step, cfg = self.state.step, self.cfg
                if step % 10 == 0 or step == cfg.steps:
                    self.state.history.append({"step": step, "loss": stats["loss"], "psnr": stats["psnr"],
                                               "seconds": round(self.state.seconds, 3), "n": stats["n"]})
                if progress is not None:
                    progress.update(1, loss=stats["loss"], psnr=stats["psnr"], gaussians=stats["n"])
                if checkpoint is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                    self.save_checkpoint(checkpoint)
                if on_step is not None:
                    on_step(self, stats)
        except StopRequested:  # raised by a progress update, where the step is whole: a resume starts right there
            if checkpoint is not None:
                self.save_checkpoint(checkpoint)
            raise
        self.model.active_sh_degree = self.sh_degree_at(self.state.step)
        return self.state


@contextmanager
def denormals_flushed():
    """Denormal floats flushed to zero for the block only. Adam's second moments of the tiny delta
    gradients fall into denormals, which make CPU arithmetic (sqrt above all) tens of times slower;
    but the mode is the thread's own, and native code sharing the process expects IEEE arithmetic
    (mediapipe's XNNPACK delegate fails to prepare under it: `emotalker track` after a training)."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def new_model(flame_model, n_gaussians: int, sh_degree: int = 1, seed: int = 0, **overrides) -> GaussianBlendshapes:
    """A freshly initialised model with `n_gaussians` face Gaussians."""
    return GaussianBlendshapes.initialize(flame_model, BlendshapeConfig(n_gaussians=n_gaussians, sh_degree=sh_degree,
                                                                        seed=seed, **overrides))


def train_neutral(dataset: str | os.PathLike, avatar_dir: str | os.PathLike,
                  config: TrainNeutralConfig = TrainNeutralConfig(), device: str = "auto", progress: str = "bar",
                  resume: bool = False, progress_sink: Callable[[dict], None] | None = None) -> dict:
    """Stage 1 on the dataset's train split into the bundle at `avatar_dir` (created when missing):
    writes flame_model.npz, neutral.safetensors and the `neutral` section of avatar.json; `resume`
    continues from the bundle's checkpoint. `progress_sink` receives the JSON progress events
    instead of stdout (the worker's). Returns the metrics."""
    from emotalker.core.base.device import resolve_device
    from emotalker.core.base.progress import Progress
    from emotalker.core.datasets.dataset import Dataset
    from emotalker.core.models.bundle import AvatarBundle
    from emotalker.core.training.budget import stage_budget
    from emotalker.core.training.history import thinned_history

    started = time.monotonic()
    cfg = config
    if cfg.steps < 1:
        raise InputError(None, "steps must be at least 1")
    dev = resolve_device(device)
    ds = Dataset.open(dataset)
    train_ids = [c.id for c in ds.split("train")]
    if not train_ids:
        raise InputError(Path(dataset) / "dataset.json", "no clips in the train split")
    frames = FrameSet(ds, train_ids, cfg.resolution, device=dev)
    flame = ds.flame_model()
    bundle = AvatarBundle.create(avatar_dir)
    trainer = _trainer(bundle, flame, frames, cfg, dev, progress, resume)
    with Progress("train neutral", cfg.steps, mode=progress, initial=trainer.state.step, sink=progress_sink) as bar:
        state = trainer.run(checkpoint=bundle.checkpoint_path("neutral"), progress=bar, budget=stage_budget(cfg, started))

    model = trainer.model
    flame.save(bundle.flame_path)
    model.save(bundle.stage_path("neutral"), dataset=str(Path(dataset).resolve().name), steps=state.step)
    recent = state.history[-10:]
    metrics = {"train_loss": float(np.mean([h["loss"] for h in recent])) if recent else None,
               "train_psnr": float(np.mean([h["psnr"] for h in recent])) if recent else None}
    metrics.update(_test_metrics(ds, model, cfg, dev))
    bundle.update_manifest(fps=ds.fps)
    bundle.update_manifest("neutral", dataset=str(Path(dataset).resolve()), steps=state.step,
                           train_minutes=round(state.seconds / 60, 2), resolution=[frames.width, frames.height],
                           n_gaussians=model.n_gaussians + model.n_teeth, n_face_gaussians=model.n_gaussians,
                           n_teeth=model.n_teeth, n_blendshapes=model.config.n_blendshapes,
                           sh_degree=model.config.sh_degree, background=list(trainer.cfg.background), metrics=metrics,
                           train=to_dict(trainer.cfg), history=thinned_history(state.history))
    return {**metrics, "steps": state.step, "n_gaussians": model.n_gaussians + model.n_teeth,
            "train_minutes": state.seconds / 60}


def _trainer(bundle, flame_model, frames: FrameSet, cfg: TrainNeutralConfig, device, progress: str,
             resume: bool) -> NeutralTrainer:
    """The run continued from the bundle's checkpoint (`resume`, when there is one), else a new one."""
    from emotalker.core.training.resume import checkpoint_to_resume, resumed

    path = checkpoint_to_resume(bundle, "neutral", resume, progress)
    if path is not None:
        trainer = NeutralTrainer.from_checkpoint(path, flame_model, frames, cfg, device)
        resumed(progress, path, trainer.state.step)
        return trainer
    if cfg.model.n_gaussians + 2 * cfg.model.n_teeth > cfg.max_gaussians:
        raise InputError(None, f"{cfg.model.n_gaussians} Gaussians plus the teeth exceed max_gaussians {cfg.max_gaussians}")
    return NeutralTrainer(GaussianBlendshapes.initialize(flame_model, cfg.model), frames, cfg, device)


def _test_metrics(ds, model: GaussianBlendshapes, cfg: TrainNeutralConfig, device) -> dict:
    """test_* metrics on `eval_frames` frames spread over the test split ({} when skipped)."""
    from emotalker.core.evaluation.neutral import evaluate

    test_ids = [c.id for c in ds.split("test")]
    if cfg.eval_frames <= 0 or not test_ids:
        return {}
    test = FrameSet(ds, test_ids, cfg.resolution, device=device)
    idx = np.unique(np.linspace(0, len(test) - 1, min(cfg.eval_frames, len(test))).round().astype(int))
    return {f"test_{k}": v for k, v in evaluate(model, test, idx.tolist()).items()}
