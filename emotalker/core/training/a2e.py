"""Training the A2E model per identity on a dataset's tracked FLAME parameters.

    train_a2e(dataset, avatar_dir, TrainA2EConfig(...))

Reads the dataset's `train` clips (audio, emotion, intensity, tracking), fits
A2EModel with
- L2 on normalised expression/jaw/neck,
- L2 on lip vertices through the rig (jaw + expression, head at rest), scaled
  by the training set's lip motion so it weighs like the parameter term,
- a smoothness term: L2 between predicted and tracked frame-to-frame velocity,
  which removes jitter without flattening real motion,
with random loudness changes and a random hidden mel band (SpecAugment-style)
per training window against overfitting the few minutes of one identity, and
writes `a2e.safetensors` and the `a2e` section of avatar.json. Checkpoints
(weights, Adam moments, step) go atomically to `bundle.checkpoint_path("a2e")`
every `checkpoint_every` steps, on Ctrl-C and on a cancel; `resume=True` continues from
there; a finished run removes its checkpoint. Batches are drawn from a generator seeded by the step, so a resumed
run follows the same sequence as an uninterrupted one.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from emotalker.core.models.a2e import A2EConfig, A2EModel, lip_indices, split_params
from emotalker.core.evaluation.a2e_metrics import LipRig, jaw_opening, lip_vertex_error_mm, pearson
from emotalker.core.audio.waveform import load_audio
from emotalker.core.audio.features import AudioFeaturizer, FeatureConfig
from emotalker.core.models.bundle import AvatarBundle
from emotalker.core.base.config import to_dict
from emotalker.core.base.errors import InputError
from emotalker.core.base.fileio import load_tensors, save_tensors
from emotalker.core.base.progress import Progress, StopRequested
from emotalker.core.training.budget import stage_budget
from emotalker.core.training.resume import checkpoint_to_resume, resumed

@dataclass(frozen=True)
class TrainA2EConfig:
    """The A2E training run."""

    steps: int = 2000
    """Training steps."""
    minutes: float | None = None
    """Fit `steps` to this wall-clock budget in minutes, loading and evaluation included (None: train `steps`)."""
    batch: int = 16
    """Windows a step."""
    window: int = 64
    """Frames a training window."""
    lr: float = 2e-3
    """Peak learning rate (short warm-up, then cosine decay to 5% of it)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    lip_weight: float = 1.0
    """Weight of the lip-vertex loss."""
    smooth_weight: float = 0.5
    """Weight of the frame-to-frame velocity loss."""
    gain_db: float = 6.0
    """Random loudness change, +- dB, so the model does not key on recording level (log-mel only)."""
    freq_mask: int = 16
    """Hide a random band of up to this many mel bins a window (log-mel only)."""
    seed: int = 0
    """Seed of the initial weights and the batches."""
    checkpoint_every: int = 200
    """Steps between checkpoints."""
    model: A2EConfig = field(default_factory=A2EConfig)
    """The network's sizes (its rig and feature sizes come from the dataset and `features`)."""
    features: FeatureConfig = field(default_factory=FeatureConfig)
    """The audio features the model reads."""


@dataclass
class ClipData:
    """One clip ready for training: seq [(T + 2C) * sub, D], params [T, E + 6], weights [8], intensity."""

    id: str
    seq: np.ndarray
    params: np.ndarray
    weights: np.ndarray
    intensity: float
    emotion: str


def prepare_clips(dataset, clips, featurizer: AudioFeaturizer) -> list[ClipData]:
    """Audio features and target parameters of each clip in `clips` (ClipInfo list)."""
    from emotalker.core.base.emotions import one_hot

    out = []
    for info in clips:
        tr = dataset.tracking(info.id)
        params = np.concatenate([tr.expr, tr.jaw, tr.neck], axis=1).astype(np.float32)
        samples = load_audio(dataset.audio_path(info.id))
        seq = featurizer(samples, dataset.fps, len(params))
        out.append(ClipData(info.id, seq, params, one_hot(info.emotion), float(info.intensity), info.emotion))
    return out


def fit_normalisation(model: A2EModel, clips: list[ClipData]) -> None:
    """Set the model's feature and output mean/std from the training clips."""
    feats = np.concatenate([c.seq for c in clips])
    params = np.concatenate([c.params for c in clips])
    out_std = params.std(0)
    # Components that never move in training keep unit scale instead of a blow-up.
    out_std = np.where(out_std > 1e-6, out_std, 1.0)
    with torch.no_grad():
        model.feat_mean.copy_(torch.from_numpy(feats.mean(0)))
        model.feat_std.copy_(torch.from_numpy(feats.std(0) + 1e-3))
        model.out_mean.copy_(torch.from_numpy(params.mean(0)))
        model.out_std.copy_(torch.from_numpy(out_std.astype(np.float32)))


def sample_batch(clips: list[ClipData], cfg: TrainA2EConfig, window: int, sub: int, context: int,
                 rng: np.random.Generator, gain_db: float = 0.0, fill: np.ndarray | None = None):
    """Random windows of `window` frames: seq [B, (L + 2C) * sub, D], weights [B, L, 8], intensity [B, L], params [B, L, E + 6]."""
    lengths = np.array([len(c.params) for c in clips], np.float64)
    picks = rng.choice(len(clips), size=cfg.batch, p=lengths / lengths.sum())
    seqs, ws, ss, ps = [], [], [], []
    for i in picks:
        c = clips[i]
        a = int(rng.integers(0, len(c.params) - window + 1))
        seq = c.seq[a * sub : (a + window + 2 * context) * sub]
        if gain_db > 0:
            # Log-mel only: a gain g shifts every band by 2 ln g (exact above the floor).
            seq = seq + np.float32(2 * np.log(10 ** (rng.uniform(-gain_db, gain_db) / 20)))
        if cfg.freq_mask > 0 and fill is not None:
            # SpecAugment-style: a band hidden (set to its training mean) so no single band is relied on.
            width = int(rng.integers(0, cfg.freq_mask + 1))
            lo = int(rng.integers(0, seq.shape[1] - width + 1))
            seq = seq.copy()
            seq[:, lo : lo + width] = fill[lo : lo + width]
        seqs.append(seq)
        ws.append(np.broadcast_to(c.weights, (window, len(c.weights))))
        ss.append(np.full(window, c.intensity, np.float32))
        ps.append(c.params[a : a + window])
    t = lambda x: torch.from_numpy(np.stack(x).astype(np.float32))  # noqa: E731
    return t(seqs), t(ws), t(ss), t(ps)


def predict_clip(model: A2EModel, clip: ClipData, weights=None, intensity=None, device="cpu") -> torch.Tensor:
    """Parameters [T, E + 6] for a prepared clip, with its own or the given emotion ([8]) and intensity."""
    T = len(clip.params)
    w = torch.as_tensor(clip.weights if weights is None else weights, dtype=torch.float32, device=device).expand(T, -1)
    s = torch.full((T,), clip.intensity if intensity is None else float(intensity), device=device)
    return model.predict(torch.from_numpy(clip.seq).to(device), w, s).cpu()


def evaluate(model: A2EModel, clips: list[ClipData], lips: LipRig, train_mean: torch.Tensor) -> dict:
    """Lip-vertex error (mm) of the model and of the always-the-training-mean baseline, and jaw correlation."""
    pred = torch.cat([predict_clip(model, c) for c in clips])
    true = torch.from_numpy(np.concatenate([c.params for c in clips]))
    pe, pj, _ = split_params(pred)
    te, tj, _ = split_params(true)
    me, mj, _ = split_params(train_mean.expand_as(true))
    return {
        "lip_vertex_err_mm": lip_vertex_error_mm(lips, pe, pj, te, tj),
        "baseline_lip_vertex_err_mm": lip_vertex_error_mm(lips, me, mj, te, tj),
        "jaw_corr": pearson(jaw_opening(pj).numpy(), jaw_opening(tj).numpy()),
        "frames": int(len(true)),
    }


def _save_checkpoint(path: Path, model: A2EModel, opt: torch.optim.Optimizer, step: int, cfg: TrainA2EConfig) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for i, state in opt.state_dict()["state"].items():
        for k, v in state.items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v)
    save_tensors(path, tensors, {"step": step, "train": to_dict(cfg), "model": model.cfg.to_dict()})


def _load_checkpoint(path: Path, model: A2EModel, opt: torch.optim.Optimizer, cfg: TrainA2EConfig) -> int:
    tensors, meta = load_tensors(path)
    if meta.get("model") != model.cfg.to_dict():
        raise InputError(path, "checkpoint was made with a different model configuration; drop --resume to start over")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state = opt.state_dict()
    for i in range(len(state["param_groups"][0]["params"])):
        keys = [k for k in tensors if k.startswith(f"opt.{i}.")]
        if keys:
            state["state"][i] = {k.split(".", 2)[2]: tensors[k] for k in keys}
    opt.load_state_dict(state)
    return int(meta["step"])


def _lr_at(step: int, cfg: TrainA2EConfig) -> float:
    """Short warm-up, then cosine decay to 5% of the peak."""
    warm = max(1, cfg.steps // 20)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(t, 1.0))))


def check_config(cfg: TrainA2EConfig) -> None:
    """What no dataset can fix, before anything is read: one InputError."""
    if cfg.features.kind == "speech" and not cfg.features.model_dir:
        raise InputError(None, "speech features need a local model folder (features.model_dir, --speech-model)")


def train_a2e(dataset: str | os.PathLike, avatar_dir: str | os.PathLike, config: TrainA2EConfig = TrainA2EConfig(),
              device: str = "auto", progress: str = "bar", resume: bool = False,
              progress_sink: Callable[[dict], None] | None = None) -> dict:
    """Train the A2E model on the dataset's train split into the bundle at `avatar_dir` (created when
    missing); `resume` continues from the bundle's checkpoint. `progress_sink` receives the JSON
    progress events instead of stdout (the worker's). Returns the metrics."""
    from emotalker.core.base.device import resolve_device
    from emotalker.core.datasets.dataset import Dataset

    cfg = config
    check_config(cfg)
    dev = resolve_device(device)
    started = time.monotonic()
    ds = Dataset.open(dataset)
    bundle = AvatarBundle.create(avatar_dir)
    if not bundle.flame_path.exists():
        shutil.copyfile(Path(ds.root) / "flame_model.npz", bundle.flame_path)
    flame = ds.flame_model()
    lips = LipRig(flame, lip_indices(flame, Path(ds.root) / "flame_model.npz"), dev)
    train_info, test_info = ds.split("train"), ds.split("test")
    if not train_info:
        raise InputError(ds.root, "dataset has no clips in the `train` split")
    featurizer = AudioFeaturizer(cfg.features)
    train_clips = prepare_clips(ds, train_info, featurizer)
    test_clips = prepare_clips(ds, test_info, featurizer)

    model_cfg = replace(cfg.model, n_expr=flame.n_expr, feat_dim=featurizer.dim, features=cfg.features)
    torch.manual_seed(cfg.seed)
    model = A2EModel(model_cfg)
    fit_normalisation(model, train_clips)
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    start, path = 0, checkpoint_to_resume(bundle, "a2e", resume, progress)
    if path is not None:
        start = _load_checkpoint(path, model, opt, cfg)
        resumed(progress, path, start)
    steps = _fit(model, opt, train_clips, lips, cfg, start, bundle.checkpoint_path("a2e"), dev, progress, progress_sink,
                 stage_budget(cfg, started))
    cfg = replace(cfg, steps=steps)

    model.eval()
    metrics = evaluate(model, test_clips or train_clips, lips, model.out_mean.cpu()) if (test_clips or train_clips) else {}
    metrics["split"] = "test" if test_clips else "train"
    minutes = (time.monotonic() - started) / 60
    extra = {"fps": ds.fps, "dataset": str(ds.root), "steps": cfg.steps, "train": to_dict(cfg), "metrics": metrics}
    model.cpu().save(bundle.stage_path("a2e"), extra)
    bundle.update_manifest("a2e", file=bundle.stage_path("a2e").name, config=model_cfg.to_dict(), fps=ds.fps,
                           features=cfg.features.kind, steps=cfg.steps, dataset=str(ds.root), metrics=metrics,
                           train_minutes=round(minutes, 3), train=to_dict(cfg))
    bundle.update_manifest(None, fps=ds.fps)
    for done in bundle.checkpoints("a2e"):
        done.unlink()
    return {**metrics, "train_minutes": minutes}


def _fit(model: A2EModel, opt: torch.optim.Optimizer, train_clips: list[ClipData], lips: LipRig,
         cfg: TrainA2EConfig, start: int, ckpt: Path, dev, progress: str, progress_sink=None, budget=None) -> int:
    """The training loop from step `start` to cfg.steps (refitted by `budget`, a StepBudget, when given);
    checkpoints to `ckpt` on the way, on Ctrl-C and when the progress sink asks to stop. Returns the steps trained."""
    window = min(cfg.window, min(len(c.params) for c in train_clips))
    # Lip loss in units of the training set's lip motion, so it weighs like the normalised parameter loss.
    all_params = torch.from_numpy(np.concatenate([c.params for c in train_clips]))
    with torch.no_grad():
        e, j, _ = split_params(all_params[:: max(1, len(all_params) // 2000)].to(dev))
        lv = lips(e, j)
        lip_scale2 = float(((lv - lv.mean(0)) ** 2).sum(-1).mean()) + 1e-12

    fc, n_out = model.cfg.features, model.cfg.n_out
    gain_db = cfg.gain_db if fc.kind == "logmel" else 0.0
    fill = model.feat_mean.cpu().numpy() if fc.kind == "logmel" else None
    model.train()
    step = start
    with Progress("train a2e", cfg.steps, mode=progress, initial=start, sink=progress_sink) as bar:
        try:
            while step < cfg.steps:
                rng = np.random.default_rng([cfg.seed, step])
                torch.manual_seed(cfg.seed * 1_000_003 + step)
                seq, w, s, target = (x.to(dev) for x in sample_batch(train_clips, cfg, window, fc.sub, fc.context, rng, gain_db, fill))
                for g in opt.param_groups:
                    g["lr"] = _lr_at(step, cfg)
                y = model(seq, w, s)
                y_true = model.normalize(target)
                loss_param = ((y - y_true) ** 2).mean()
                pe, pj, _ = split_params(model.denormalize(y).reshape(-1, n_out))
                te, tj, _ = split_params(target.reshape(-1, n_out))
                loss_lip = ((lips(pe, pj) - lips(te, tj)) ** 2).sum(-1).mean() / lip_scale2
                loss_smooth = ((y.diff(dim=1) - y_true.diff(dim=1)) ** 2).mean()
                loss = loss_param + cfg.lip_weight * loss_lip + cfg.smooth_weight * loss_smooth
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                step += 1
                if budget is not None and (steps := budget.follow(step, cfg.steps, bar)) is not None:
                    cfg = replace(cfg, steps=steps)
                bar.update(1, loss=loss.item(), lip=loss_lip.item())
                if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    _save_checkpoint(ckpt, model, opt, step, cfg)
        except (KeyboardInterrupt, StopRequested):
            _save_checkpoint(ckpt, model, opt, step, cfg)
            raise
    return step
