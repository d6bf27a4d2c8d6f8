"""All three training stages in turn, with one nested config:

    train_all(dataset, avatar_dir, TrainAllConfig(neutral=..., a2e=..., emotion=...))

Stage 1 first (Stage 2 is trained on top of it), then A2E (whose audio
features Stage 2 reads), then Stage 2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from emotalker.core.training.a2e import TrainA2EConfig, train_a2e
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


STAGES = (("neutral", train_neutral), ("a2e", train_a2e), ("emotion", train_emotion))


def train_all(dataset: str | os.PathLike, avatar_dir: str | os.PathLike, config: TrainAllConfig = TrainAllConfig(),
              device: str = "auto", progress: str = "bar", resume: bool = False, on_stage=None) -> dict[str, dict]:
    """Train every stage into the bundle at `avatar_dir`; `resume` continues each from its checkpoint.
    Returns {stage: its metrics}; `on_stage(stage, metrics)` is called as each stage finishes."""
    results = {}
    for stage, train in STAGES:
        results[stage] = train(dataset, avatar_dir, getattr(config, stage), device, progress, resume)
        if on_stage is not None:
            on_stage(stage, results[stage])
    return results
