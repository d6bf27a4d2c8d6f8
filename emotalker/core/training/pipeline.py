"""All three training stages in turn, with one nested config:

    train_all(dataset, avatar_dir, TrainAllConfig(neutral=..., a2e=..., emotion=...))

Stage 1 first (Stage 2 is trained on top of it), then A2E (whose audio
features Stage 2 reads), then Stage 2. Before the first step, each stage is
probed and the run planned (`emotalker.core.training.plan`): steps, time,
and, with a budget, the steps fitted to it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from emotalker.core.training.a2e import TrainA2EConfig, check_config as check_a2e_config, train_a2e
from emotalker.core.training.emotion import TrainEmotionConfig, train_emotion
from emotalker.core.training.neutral import TrainNeutralConfig, train_neutral


@dataclass(frozen=True)
class TrainAllConfig:
    """One config a stage."""

    neutral: TrainNeutralConfig = field(default_factory=TrainNeutralConfig)
    """Stage 1: the Gaussian blendshapes."""
    a2e: TrainA2EConfig = field(default_factory=TrainA2EConfig)
    """The audio-to-expression model."""
    emotion: TrainEmotionConfig = field(default_factory=TrainEmotionConfig)
    """Stage 2: the emotion attention."""
    minutes: float | None = None
    """Wall-clock budget of the whole run in minutes, shared out among the stages (None: 30 on a CPU unless
    a stage's steps are set, none on CUDA; 0: none, each stage trains its own steps)."""


STAGES = (("neutral", train_neutral), ("a2e", train_a2e), ("emotion", train_emotion))
STAGE_NAMES = tuple(name for name, _ in STAGES)


def train_all(dataset: str | os.PathLike, avatar_dir: str | os.PathLike, config: TrainAllConfig = TrainAllConfig(),
              device: str = "auto", progress: str = "bar", resume: bool = False, on_stage=None,
              progress_sink: Callable[[dict], None] | None = None, stages: tuple[str, ...] = STAGE_NAMES,
              on_plan=None) -> dict[str, dict]:
    """Train `stages` (all by default) into the bundle at `avatar_dir`; `resume` continues each from its
    checkpoint. Returns {stage: its metrics}. `on_plan(plan)` is called with the TrainingPlan before the
    first step, `on_stage(stage, metrics)` as each stage finishes; `progress_sink` receives every stage's
    JSON progress events (the worker's)."""
    from emotalker.core.base.device import resolve_device
    from emotalker.core.models.bundle import AvatarBundle
    from emotalker.core.training.plan import FINISH_SECONDS, plan_training, run_minutes, stage_config

    started = time.monotonic()
    # What no plan can fix fails first, before the probes and before anything is written.
    if "a2e" in stages:
        check_a2e_config(config.a2e)
    if "emotion" in stages and "neutral" not in stages:
        AvatarBundle.open(avatar_dir).require_stage("neutral")
    dev = resolve_device(device)
    minutes = run_minutes(config, dev)
    plan = plan_training(dataset, config, list(stages), dev, minutes)
    if on_plan is not None:
        on_plan(plan)
    deadline = None if minutes is None else started + minutes * 60 - FINISH_SECONDS
    results = {}
    for stage in stages:
        cfg = stage_config(plan, stage, getattr(config, stage), None if deadline is None else deadline - time.monotonic())
        results[stage] = dict(STAGES)[stage](dataset, avatar_dir, cfg, device, progress, resume,
                                             progress_sink=progress_sink)
        if stage == stages[0]:  # the bundle exists now
            AvatarBundle.open(avatar_dir).update_manifest(None, plan=plan.to_dict())
        if on_stage is not None:
            on_stage(stage, results[stage])
    return results


def stages_to_train(stage: str, config: TrainAllConfig) -> tuple[TrainAllConfig, tuple[str, ...]]:
    """What `train <stage>` trains: every stage under the run's budget for "all", else the one stage
    under its own `minutes` (no run budget)."""
    if stage == "all":
        return config, STAGE_NAMES
    return replace(config, minutes=0), (stage,)


def held_out_psnr(stage: str, metrics: dict) -> float | None:
    """The stage's held-out PSNR in dB (None for A2E, which is judged on lip motion, or when nothing was held out)."""
    if stage == "neutral":
        return metrics.get("test_psnr")
    if stage == "emotion" and "stage2" in metrics:
        return metrics["stage2"]["psnr"]
    return None


def stage_summary(stage: str, metrics: dict) -> str:
    """What a finished stage achieved, in one line for a person (the CLI and the Blender status bar)."""
    if stage == "neutral":
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float) and k in
                          ("train_psnr", "test_psnr", "test_mouth_psnr"))
        return f"Stage 1: {metrics['n_gaussians']} Gaussians after {metrics['steps']} steps; {shown}"
    if stage == "a2e":
        return (f"A2E: lip vertex error {metrics['lip_vertex_err_mm']:.3f} mm (training-mean baseline "
                f"{metrics['baseline_lip_vertex_err_mm']:.3f} mm), jaw correlation {metrics['jaw_corr']:.3f} "
                f"on {metrics['split']} clips, {metrics['train_minutes']:.1f} min")
    line = f"Stage 2 in {metrics['train_minutes']:.1f} min"
    if "stage2" in metrics:
        line += (f"; test PSNR {metrics['stage2']['psnr']:.2f} dB with Stage 2, "
                 f"{metrics['stage1_only']['psnr']:.2f} dB with Stage 1 alone")
    return line
