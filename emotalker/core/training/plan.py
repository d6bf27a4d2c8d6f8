"""The plan of a training run, printed before its first step: steps, time, Gaussians, resolution.

Each stage's step time is measured by a short probe (a dozen steps of the real
trainer on one clip, thrown away), so the estimate is this machine's, under its
present load. Stage 1's steps grow dearer as densification multiplies its
Gaussians, so it is probed at its first and at its largest size.

A budget (`--minutes`) turns the estimate around: the steps are fitted to the
time, and `emotalker.core.training.budget` keeps fitting them while training.
`train all` shares its budget out by STAGE_SHARES; each stage's share is
recomputed from the time left when it starts, so a stage that ran over is
paid for by the ones after it. On a CPU, `train all` has a budget by default
(CPU_MINUTES); on CUDA it trains the configured (the paper's) steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from emotalker.core.training.budget import FINISH_FRACTION

# Shares of the training time: Stage 1 carries the quality; A2E converges in a few thousand
# cheap steps; Stage 2's gain needs a few thousand frames (docs/stage2.md).
STAGE_SHARES = {"neutral": 0.60, "a2e": 0.12, "emotion": 0.28}
CPU_MINUTES = 30.0
# Kept back from a whole run's budget for what follows the last step: Stage 2's held-out
# evaluation and the avatar report (with it, the default sample's 10-, 30- and 40-minute runs
# ended 22 s over, 4 s and 22 s under their budgets).
FINISH_SECONDS = 70.0
PROBE_WARMUP, PROBE_STEPS = 3, 12
# Runs shorter than this many steps (tests, smoke runs) are not worth a probe: their plan says so.
PROBE_MIN_STEPS = 200


@dataclass
class StagePlan:
    stage: str
    steps: int
    seconds_per_step: float | None
    """Mean over the planned run (Stage 1: its densification's growth included); None: not probed."""
    budget_seconds: float | None
    gaussians: str
    resolution: str

    @property
    def estimate_seconds(self) -> float | None:
        if self.budget_seconds is not None:
            return self.budget_seconds
        return None if self.seconds_per_step is None else self.steps * self.seconds_per_step

    def line(self) -> str:
        fit = f"fitted to {self.budget_seconds / 60:.1f} min" if self.budget_seconds is not None else "as configured"
        if self.seconds_per_step is None:
            timing = f"{fit}; too short to probe)  ~    ? min"
        else:
            timing = f"{fit}; {self.seconds_per_step * 1000:.0f} ms a step)  ~{self.estimate_seconds / 60:5.1f} min"
        return f"  {self.stage:8s} {self.steps:7d} steps ({timing}  {self.gaussians}  {self.resolution}"


@dataclass
class TrainingPlan:
    stages: list[StagePlan]
    minutes: float | None
    """The whole run's budget (None: each stage trains its steps)."""
    device: str
    probe_seconds: float

    @property
    def estimate_seconds(self) -> float:
        """The whole run's (stages not probed count nothing)."""
        return self.minutes * 60 if self.minutes else sum(s.estimate_seconds or 0.0 for s in self.stages)

    def lines(self) -> list[str]:
        budget = f"a budget of {self.minutes:g} min" if self.minutes else "no time budget"
        return ([f"plan ({self.device}, {budget}; probed in {self.probe_seconds:.0f} s):"]
                + [s.line() for s in self.stages]
                + [f"  estimated total: {self.estimate_seconds / 60:.1f} min"
                   + (" and the stages too short to probe" if any(st.estimate_seconds is None for st in self.stages)
                      else "")])

    def to_dict(self) -> dict:
        return {"minutes": self.minutes, "device": self.device, "estimate_minutes": round(self.estimate_seconds / 60, 2),
                "stages": [{"stage": s.stage, "steps": s.steps,
                            "ms_per_step": None if s.seconds_per_step is None else round(s.seconds_per_step * 1000, 1),
                            "budget_minutes": None if s.budget_seconds is None else round(s.budget_seconds / 60, 2),
                            "estimate_minutes": None if s.estimate_seconds is None else round(s.estimate_seconds / 60, 2),
                            "gaussians": s.gaussians,
                            "resolution": s.resolution} for s in self.stages]}


def run_minutes(config, device) -> float | None:
    """The whole run's budget in minutes (None: none). TrainAllConfig.minutes as given (0: none); when
    unset, CPU_MINUTES on a CPU unless a stage's steps were changed from their defaults (asking for
    steps means no budget), and none on CUDA."""
    if config.minutes is not None:
        return config.minutes or None
    steps_set = any(getattr(config, stage).steps != type(getattr(config, stage))().steps for stage in STAGE_SHARES)
    return CPU_MINUTES if torch.device(device).type == "cpu" and not steps_set else None


def budget_share(stage: str, stages: list[str], seconds_left: float) -> float:
    """Seconds of `seconds_left` for `stage`, the first of `stages` still to train."""
    return seconds_left * STAGE_SHARES[stage] / sum(STAGE_SHARES[s] for s in stages)


def plan_training(dataset, config, stages: list[str], device, minutes: float | None) -> TrainingPlan:
    """Probe each of `stages` (names of TrainAllConfig's fields) and plan them. `minutes`: the whole
    run's budget, shared out (None: each stage's own `minutes` budget, else its steps)."""
    from emotalker.core.datasets.dataset import Dataset

    started = time.monotonic()
    ds = Dataset.open(dataset)
    probes = {"neutral": _probe_neutral, "a2e": _probe_a2e, "emotion": _probe_emotion}
    probed = [s for s in stages if minutes or getattr(config, s).minutes or getattr(config, s).steps >= PROBE_MIN_STEPS]
    probe_model = _probe_models(ds, config) if {"neutral", "emotion"} & set(probed) else None
    rates = _rng_untouched(lambda: {stage: probes[stage](ds, config, device, probe_model) for stage in probed})
    probe_seconds = time.monotonic() - started
    left = None if minutes is None else minutes * 60 - probe_seconds - FINISH_SECONDS
    plans = []
    for i, stage in enumerate(stages):
        cfg = getattr(config, stage)
        budget = cfg.minutes * 60 if left is None and cfg.minutes else None
        if left is not None:
            budget = budget_share(stage, stages[i:], left)
            left -= budget
        steps = cfg.steps if budget is None else _steps_for(budget * (1 - FINISH_FRACTION), rates[stage])
        per_step = rates[stage](steps) if stage in rates else None
        plans.append(StagePlan(stage, steps, per_step, budget, *_sizes(stage, cfg, ds)))
    return TrainingPlan(plans, minutes, str(device), probe_seconds)


def stage_config(plan: TrainingPlan, stage: str, cfg, seconds_left: float | None):
    """`cfg` with the plan's steps (and budget) for `stage`; in a budgeted run its budget is shared out
    again from `seconds_left`, and its steps scaled to match."""
    planned = next(s for s in plan.stages if s.stage == stage)
    if planned.budget_seconds is None:
        return cfg
    if plan.minutes is None:
        return replace(cfg, steps=planned.steps)
    later = [s.stage for s in plan.stages[plan.stages.index(planned):]]
    budget = budget_share(stage, later, max(seconds_left, 1.0))
    return replace(cfg, steps=max(round(planned.steps * budget / planned.budget_seconds), 1), minutes=budget / 60)


def _rng_untouched(fn):
    """`fn()` with torch's and numpy's global random state restored after it (the probes draw from them)."""
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    try:
        return fn()
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)


def _steps_for(seconds: float, per_step) -> int:
    """The step count whose run takes `seconds` (per_step(steps) may depend on the count)."""
    steps = max(int(seconds / per_step(1000)), 1)
    for _ in range(3):  # Stage 1's mean step time depends on the count through its densification window
        steps = max(int(seconds / per_step(steps)), 1)
    return steps


def _sizes(stage: str, cfg, ds) -> tuple[str, str]:
    res = cfg.resolution if getattr(cfg, "resolution", None) else max(ds.width, ds.height)
    resolution = f"{res} px" if stage != "a2e" else "audio"
    if stage == "neutral":
        return f"{cfg.model.n_gaussians:,} -> {cfg.max_gaussians:,} Gaussians", resolution
    return ("Stage 1's Gaussians" if stage == "emotion" else "-"), resolution


def _timed(run_to) -> float:
    """Seconds a step, from `run_to(n)` (train until n steps are done): the warm-up steps left out."""
    run_to(PROBE_WARMUP)
    t = time.perf_counter()
    run_to(PROBE_WARMUP + PROBE_STEPS)
    return (time.perf_counter() - t) / PROBE_STEPS


def _probe_neutral(ds, config, device, probe_model):
    """Stage 1's mean step time as a function of the step count: probed at its first and largest
    sizes, the Gaussians taken to grow evenly over the densification window."""
    from emotalker.core.datasets.frames import FrameSet
    from emotalker.core.training.neutral import NeutralTrainer

    cfg = replace(config.neutral, steps=10**6, checkpoint_every=10**9)
    frames = FrameSet(ds, [ds.split("train")[0].id], cfg.resolution, device=device)
    small, large = (_timed(lambda k, t=NeutralTrainer(probe_model(grown), frames, cfg, device): _run_neutral(t, k))
                    for grown in (False, True))

    def per_step(steps: int) -> float:
        c = replace(config.neutral, steps=steps).resolved(device)
        grow = max(c.densify_until - c.densify_from, 0)
        return (c.densify_from * small + grow * (small + large) / 2 + max(steps - c.densify_until, 0) * large) / max(
            c.densify_from + grow + max(steps - c.densify_until, 0), 1)
    return per_step


def _probe_models(ds, config):
    """`probe_model(grown)`: one fresh Stage 1 model for every probe (its rig's deformation transfer,
    the dear part of a first step, is computed once), at its first size or grown to the largest that
    densification allows (copies, shrunk to cover the same surface)."""
    from emotalker.core.models.blendshapes import GaussianBlendshapes

    cfg = config.neutral
    model = GaussianBlendshapes.initialize(ds.flame_model(), cfg.model)

    def probe_model(grown: bool):
        n, n_max = model.n_gaussians, max(cfg.max_gaussians - model.n_teeth, cfg.model.n_gaussians)
        if grown and n < n_max:
            model.gather(torch.arange(n_max) % n)
            with torch.no_grad():  # as densification does: as many more on the same surface, each smaller
                model.log_scales -= 0.5 * math.log(n_max / n)
        return model
    return probe_model


def _run_neutral(trainer, steps: int) -> None:
    while trainer.state.step < steps:
        trainer.train_step()


def _probe_a2e(ds, config, device, probe_model):
    import tempfile
    from pathlib import Path

    from emotalker.core.audio.features import AudioFeaturizer
    from emotalker.core.evaluation.a2e_metrics import LipRig
    from emotalker.core.models.a2e import A2EModel, lip_indices
    from emotalker.core.training.a2e import _fit, fit_normalisation, prepare_clips

    cfg = config.a2e
    flame = ds.flame_model()
    featurizer = AudioFeaturizer(cfg.features)
    clips = prepare_clips(ds, ds.split("train")[:2], featurizer)
    model = A2EModel(replace(cfg.model, n_expr=flame.n_expr, feat_dim=featurizer.dim, features=cfg.features))
    fit_normalisation(model, clips)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    lips = LipRig(flame, lip_indices(flame, Path(ds.root) / "flame_model.npz"), device)
    with tempfile.TemporaryDirectory() as tmp:
        done = [0]

        def run_to(k):
            _fit(model, opt, clips, lips, replace(cfg, steps=k), done[0], Path(tmp) / "probe", device, "none")
            done[0] = k
        per_step = _timed(run_to)
    return lambda steps: per_step


def _probe_emotion(ds, config, device, probe_model):
    """Stage 2's step time on a fresh Stage 1 of the size Stage 1 will end at (its cost is the render)."""
    from emotalker.core.datasets.emotion_frames import EmotionFrames
    from emotalker.core.training.emotion import EmotionTrainer, new_deformer

    n1 = config.neutral
    cfg = replace(config.emotion, steps=10**6, checkpoint_every=10**9,
                  resolution=config.emotion.resolution or n1.resolution,
                  background=config.emotion.background or tuple(n1.background))
    frames = EmotionFrames(ds, [ds.split("train")[0].id], config.a2e.features, cfg.resolution, cfg.background, device)
    stage1 = probe_model(True)
    stage1.active_sh_degree = stage1.config.sh_degree
    trainer = EmotionTrainer(stage1, new_deformer(stage1, frames, cfg), frames, cfg, device)

    def run_to(k):
        while trainer.step < k:
            trainer.train_step()
    per_step = _timed(run_to)
    return lambda steps: per_step
