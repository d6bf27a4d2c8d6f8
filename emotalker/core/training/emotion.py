"""Stage 2 training: fit the emotion attention on top of a trained Stage 1.

    train_emotion(dataset, avatar_dir, TrainEmotionConfig(...))

One training frame a step (train split, self-driven: the tracked FLAME
parameters): Stage 1 posed by the frame (frozen by default, or lightly tuned
with `neutral_lr_scale`), Stage 2's offsets added, rendered from the frame's
camera; loss lambda_rgb L1 + lambda_dssim D-SSIM + lambda_alpha mean((alpha -
mask)^2) (+ lambda_vgg VGG features when a local VGG16 weights file is given).
Adam, learning rate decaying exponentially from `lr` to `lr_final` (1e-3 to 1e-4 by default).

The paper's FLAME loss ties per-Gaussian expression, pose-corrective and
skinning values predicted by its deformation network to the nearest FLAME
vertex. Here those values are not predicted: every Gaussian takes them from
its bound triangle by barycentric interpolation (Stage 1's binding), i.e.
they equal the pseudo ground truth by construction and the term is
identically zero, so it is not computed.

Writes `emotion.safetensors` and the `emotion` section of avatar.json.
Checkpoints (network, Adam moments, step, RNG, history) go atomically to
`bundle.checkpoint_path("emotion")` every `checkpoint_every` steps and on
Ctrl-C and on a cancel; `resume=True` continues from there; a finished run removes its checkpoint.
An unset resolution and background are Stage 1's (`with_stage1_defaults`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from emotalker.core.models.avatar import Avatar, render_avatar
from emotalker.core.models.bundle import AvatarBundle
from emotalker.core.models.emotion_deformer import EmotionConfig, EmotionDeformer, INTENSITY_TEXTS
from emotalker.core.datasets.emotion_frames import EmotionFrames
from emotalker.core.base.config import to_dict
from emotalker.core.base.errors import InputError
from emotalker.core.base.fileio import load_tensors, save_tensors
from emotalker.core.base.progress import StopRequested
from emotalker.core.training.losses import dssim, l1

CHECKPOINT_FORMAT = "emotalker-emotion-checkpoint/1"


@dataclass(frozen=True)
class TrainEmotionConfig:
    """Stage 2's training run."""

    steps: int = 2000
    """Training steps, one frame each."""
    minutes: float | None = None
    """Fit `steps` to this wall-clock budget in minutes, loading and evaluation included (None: train `steps`)."""
    # 10x the paper's 1e-4 -> 1e-5: the zero-initialised heads must travel far in the few thousand
    # single-frame steps a CPU affords (600 steps at 1e-4 added 0.05 dB, at 1e-3 1.1 dB; docs/stage2.md).
    lr: float = 1e-3
    """Learning rate at the start (decays exponentially to lr_final)."""
    lr_final: float = 1e-4
    """Learning rate at the last step."""
    lr_null: float = 1e-2
    """Learning rate of the per-Gaussian null codes (each sees one frame's gradient at a time)."""
    lr_static: float = 1e-2
    """Learning rate of the static offsets (each emotion's own per Gaussian; each sees one frame's gradient at a time)."""
    resolution: int | None = None
    """Longer image side to train at (None: Stage 1's)."""
    background: tuple[float, float, float] | None = None
    """Background colour, linear RGB (None: Stage 1's)."""
    lambda_rgb: float = 1.0
    """Weight of the L1 colour loss."""
    lambda_dssim: float = 0.25
    """Weight of the D-SSIM loss."""
    lambda_alpha: float = 1.0
    """Weight of the squared error between the rendered alpha and the mask."""
    lambda_vgg: float = 0.1
    """Weight of the VGG feature loss (only with vgg_weights)."""
    vgg_weights: str | None = None
    """Local VGG16 weights file: adds the VGG feature loss (none without one)."""
    neutral_lr_scale: float = 0.0
    """Also tune Stage 1 at this fraction of its own learning rates (0: Stage 1 frozen)."""
    text_checkpoint: str | None = None
    """Local open_clip checkpoint: CLIP text embeddings for the emotion and intensity tokens."""
    text_model: str = "ViT-B-32"
    """open_clip model name of text_checkpoint."""
    checkpoint_every: int = 200
    """Steps between checkpoints."""
    eval_stride: int = 5
    """Evaluate every n-th test frame at the end."""
    seed: int = 0
    """Seed of the initial weights and the frame order."""
    backend: str = "auto"
    """Rasterizer backend (auto, cpu, gsplat)."""
    model: EmotionConfig = field(default_factory=EmotionConfig)
    """The network's sizes (its Gaussian count, audio width and features come from the bundle)."""


def lr_at(step: int, steps: int, lr: float, lr_final: float) -> float:
    """Exponential decay from lr (step 0) to lr_final (the last step)."""
    t = min(max(step / max(steps, 1), 0.0), 1.0)
    return math.exp((1 - t) * math.log(lr) + t * math.log(lr_final))


def feature_config(bundle: AvatarBundle):
    """The A2E model's audio features when the bundle has one (so both read the same features), else the default."""
    from emotalker.core.audio.features import FeatureConfig
    from emotalker.core.models.a2e import A2EConfig

    if bundle.has_stage("a2e"):
        _, meta = load_tensors(bundle.stage_path("a2e"))
        return A2EConfig.from_dict(meta["config"]).features
    return FeatureConfig()


def new_deformer(stage1, frames: EmotionFrames, cfg: TrainEmotionConfig) -> EmotionDeformer:
    """A fresh Stage 2 network sized for `stage1`, normalised on `frames`, with CLIP text
    embeddings cached in it when cfg.text_checkpoint is given."""
    audio = frames.all_audio()
    text = None
    if cfg.text_checkpoint:
        from emotalker.core.base.emotions import EMOTIONS
        from emotalker.core.models.text_embed import clip_text_embeddings

        text = (clip_text_embeddings(list(EMOTIONS), cfg.text_checkpoint, cfg.text_model),
                clip_text_embeddings(list(INTENSITY_TEXTS), cfg.text_checkpoint, cfg.text_model))
    ecfg = replace(cfg.model, n_gaussians=stage1.n_gaussians, audio_dim=audio.shape[1], features=frames.features,
                   d_text=0 if text is None else int(text[0].shape[1]))
    torch.manual_seed(cfg.seed)
    model = EmotionDeformer(ecfg)
    with torch.no_grad():
        model.feat_mean.copy_(torch.from_numpy(audio.mean(0)))
        model.feat_std.copy_(torch.from_numpy(audio.std(0) + 1e-3))
        model.camera_mean.copy_(frames.mean_camera())
        if text is not None:
            model.emotion_text.copy_(torch.as_tensor(text[0]))
            model.intensity_text.copy_(torch.as_tensor(text[1]))
    return model


class EmotionTrainer:
    """Owns Stage 1, the Stage 2 network, the optimiser, the frames and the step of one run."""

    def __init__(self, stage1, deformer: EmotionDeformer, frames: EmotionFrames, cfg: TrainEmotionConfig, device="cpu"):
        self.stage1 = stage1.to(device)
        self.deformer = deformer.to(device)
        self.avatar = Avatar(self.stage1, self.deformer)
        self.frames = frames
        self.cfg = cfg
        self.device = torch.device(device)
        self.step = 0
        self.seconds = 0.0
        self.history: list[dict] = []
        self.generator = torch.Generator().manual_seed(cfg.seed)
        own_lr = {"null": cfg.lr_null, "static": cfg.lr_static}  # per-Gaussian parameters
        net = [p for n, p in deformer.named_parameters() if n not in own_lr]
        groups = [{"params": net, "lr": cfg.lr, "base_lr": cfg.lr, "name": "net"}]
        groups += [{"params": [p], "lr": own_lr[n], "base_lr": own_lr[n], "name": n}
                   for n, p in deformer.named_parameters() if n in own_lr]
        tune = cfg.neutral_lr_scale > 0
        for p in stage1.parameters():
            p.requires_grad_(tune)
        if tune:
            from emotalker.core.training.neutral import TrainNeutralConfig, build_optimizer

            for g in build_optimizer(stage1, TrainNeutralConfig()).param_groups:
                lr = g["lr"] * cfg.neutral_lr_scale
                groups.append({"params": g["params"], "lr": lr, "base_lr": lr, "name": "neutral." + g["name"]})
        self.opt = torch.optim.Adam(groups, eps=1e-15)
        self.vgg = None
        if cfg.vgg_weights and cfg.lambda_vgg > 0:
            from emotalker.core.training.vgg import VGGFeatures

            self.vgg = VGGFeatures.load(cfg.vgg_weights).to(device)

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        decay = lr_at(self.step, cfg.steps, cfg.lr, cfg.lr_final) / cfg.lr
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * decay
        i = int(torch.randint(len(self.frames), (1,), generator=self.generator))
        frame, conditions = self.frames.get(i)
        g = self.avatar.evaluate_differentiable(conditions).unbind()[0]
        out = render_avatar(g, frame.camera, self.frames.background, cfg.backend)
        rgb, alpha = out.rgb[0], out.alpha[0]
        loss = cfg.lambda_rgb * l1(rgb, frame.image) + cfg.lambda_dssim * dssim(rgb, frame.image)
        loss = loss + cfg.lambda_alpha * ((alpha - frame.mask) ** 2).mean()
        if self.vgg is not None:
            loss = loss + cfg.lambda_vgg * self.vgg.loss(rgb, frame.image)
        if loss.requires_grad:  # intensity-0 frames have no offsets to train
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.step += 1
        with torch.no_grad():
            mse = float(((rgb - frame.image) ** 2).mean())
        return {"loss": float(loss.detach()), "psnr": 10 * math.log10(1 / max(mse, 1e-12))}

    # -- checkpoints ---------------------------------------------------------------------

    def save_checkpoint(self, path: str | Path) -> None:
        tensors = {f"model.{k}": v for k, v in self.deformer.state_dict().items()}
        if self.cfg.neutral_lr_scale > 0:
            tensors.update({f"neutral.{k}": v for k, v in self.stage1.state_dict().items()})
        for gi, group in enumerate(self.opt.param_groups):
            for pi, p in enumerate(group["params"]):
                st = self.opt.state.get(p)
                if st:
                    for key in ("exp_avg", "exp_avg_sq"):
                        tensors[f"opt.{gi}.{pi}.{key}"] = st[key]
                    tensors[f"opt.{gi}.{pi}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
        tensors["train.rng"] = self.generator.get_state()
        meta = {"format": CHECKPOINT_FORMAT, "model": self.deformer.cfg.to_dict(), "train": to_dict(self.cfg),
                "step": self.step, "seconds": self.seconds, "history": self.history}
        save_tensors(path, tensors, meta)

    def load_checkpoint(self, path: str | Path) -> None:
        """Continue from `save_checkpoint`'s file; InputError when it was made for another model."""
        tensors, meta = load_tensors(path)
        if meta.get("format") != CHECKPOINT_FORMAT or meta.get("model") != self.deformer.cfg.to_dict():
            raise InputError(path, "checkpoint was made with a different emotion model configuration; drop --resume to start over")
        self.deformer.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if self.cfg.neutral_lr_scale > 0:
            self.stage1.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("neutral.")})
        for gi, group in enumerate(self.opt.param_groups):
            for pi, p in enumerate(group["params"]):
                if f"opt.{gi}.{pi}.exp_avg" in tensors:
                    self.opt.state[p] = {"step": tensors[f"opt.{gi}.{pi}.step"].reshape(()).clone(),
                                         "exp_avg": tensors[f"opt.{gi}.{pi}.exp_avg"].to(self.device),
                                         "exp_avg_sq": tensors[f"opt.{gi}.{pi}.exp_avg_sq"].to(self.device)}
        self.generator.set_state(tensors["train.rng"])
        self.step, self.seconds, self.history = int(meta["step"]), float(meta["seconds"]), list(meta["history"])

    # -- loop ----------------------------------------------------------------------------

    def run(self, checkpoint: str | Path | None = None, progress=None, budget=None) -> None:
        """Train to cfg.steps (refitted by `budget`, a StepBudget, when given); checkpoint every
        cfg.checkpoint_every steps, on Ctrl-C and when the progress sink asks to stop."""
        t0 = time.monotonic() - self.seconds
        try:
            while self.step < self.cfg.steps:
                stats = self.train_step()
                self.seconds = time.monotonic() - t0
                if budget is not None and (steps := budget.follow(self.step, self.cfg.steps, progress)) is not None:
                    self.cfg = replace(self.cfg, steps=steps)
                if self.step % 10 == 0 or self.step == self.cfg.steps:
                    self.history.append({"step": self.step, "loss": stats["loss"], "psnr": stats["psnr"],
                                         "seconds": round(self.seconds, 3)})
                if progress is not None:
                    progress.update(1, loss=stats["loss"], psnr=stats["psnr"])
                if checkpoint is not None and self.step % self.cfg.checkpoint_every == 0 and self.step < self.cfg.steps:
                    self.save_checkpoint(checkpoint)
        except (KeyboardInterrupt, StopRequested):
            if checkpoint is not None:
                self.save_checkpoint(checkpoint)
            raise


def with_stage1_defaults(cfg: TrainEmotionConfig, bundle: AvatarBundle) -> TrainEmotionConfig:
    """`cfg` with an unset resolution and background taken from the bundle's Stage 1 (white when unrecorded)."""
    neutral = bundle.manifest().get("stages", {}).get("neutral", {})
    resolution = cfg.resolution
    if resolution is None and neutral.get("resolution"):
        resolution = max(neutral["resolution"])
    background = cfg.background or tuple(neutral.get("background", (1.0, 1.0, 1.0)))
    return replace(cfg, resolution=resolution, background=tuple(background))


def train_emotion(dataset: str | os.PathLike, avatar_dir: str | os.PathLike,
                  config: TrainEmotionConfig = TrainEmotionConfig(), device: str = "auto", progress: str = "bar",
                  resume: bool = False, progress_sink: Callable[[dict], None] | None = None) -> dict:
    """Train Stage 2 on the dataset's train clips into the bundle at `avatar_dir` (which must hold
    Stage 1); `resume` continues from the bundle's checkpoint. `progress_sink` receives the JSON
    progress events instead of stdout (the worker's). Returns the metrics."""
    from emotalker.core.base.device import resolve_device
    from emotalker.core.base.progress import Progress
    from emotalker.core.training.resume import checkpoint_to_resume, resumed
    from emotalker.core.datasets.dataset import Dataset
    from emotalker.core.evaluation.emotion import evaluate_emotion
    from emotalker.core.training.budget import stage_budget
    from emotalker.core.training.history import thinned_history

    if config.steps < 1:
        raise InputError(None, "steps must be at least 1")
    dev = resolve_device(device)
    started = time.monotonic()
    ds = Dataset.open(dataset)
    bundle = AvatarBundle.open(avatar_dir)
    cfg = with_stage1_defaults(config, bundle)
    stage1 = Avatar.open(bundle, dev, use_emotion=False).stage1
    features = feature_config(bundle)
    train_ids = [c.id for c in ds.split("train")]
    if not train_ids:
        raise InputError(ds.root, "dataset has no clips in the `train` split")
    frames = EmotionFrames(ds, train_ids, features, cfg.resolution, cfg.background, dev)
    trainer = EmotionTrainer(stage1, new_deformer(stage1, frames, cfg), frames, cfg, dev)
    path = checkpoint_to_resume(bundle, "emotion", resume, progress)
    if path is not None:
        trainer.load_checkpoint(path)
        resumed(progress, path, trainer.step)
    trainer.deformer.train()
    with Progress("train emotion", cfg.steps, mode=progress, initial=trainer.step, sink=progress_sink) as bar:
        trainer.run(bundle.checkpoint_path("emotion"), bar, stage_budget(cfg, started))
    trainer.deformer.eval()
    cfg = trainer.cfg  # with the steps a budget fitted

    test_ids = [c.id for c in ds.split("test")]
    metrics: dict = {}
    if test_ids:
        test = EmotionFrames(ds, test_ids, features, cfg.resolution, cfg.background, dev, stride=max(1, cfg.eval_stride))
        metrics = {"split": "test", "stage2": evaluate_emotion(trainer.avatar, test, backend=cfg.backend),
                   "stage1_only": evaluate_emotion(Avatar(trainer.stage1), test, backend=cfg.backend)}
    minutes = (time.monotonic() - started) / 60
    extra = {"dataset": str(ds.root), "steps": cfg.steps, "train": to_dict(cfg), "metrics": metrics}
    trainer.deformer.cpu().save(bundle.stage_path("emotion"), extra)
    if cfg.neutral_lr_scale > 0:  # the offsets were fitted to the tuned Stage 1: keep them together
        trainer.stage1.cpu().save(bundle.stage_path("neutral"))
    bundle.update_manifest("emotion", file=bundle.stage_path("emotion").name, config=trainer.deformer.cfg.to_dict(),
                           steps=cfg.steps, dataset=str(ds.root), metrics=metrics,
                           neutral_tuned=cfg.neutral_lr_scale > 0, train_minutes=round(minutes, 3),
                           train=to_dict(cfg), history=thinned_history(trainer.history))
    for done in bundle.checkpoints("emotion"):
        done.unlink()
    return {**metrics, "train_minutes": minutes, "train_seconds_per_step": trainer.seconds / max(trainer.step, 1)}
