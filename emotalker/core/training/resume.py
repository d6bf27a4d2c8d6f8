"""Which checkpoint a training stage continues from (the same rule for every stage)."""

from __future__ import annotations

from pathlib import Path

from emotalker.core.base.progress import note
from emotalker.core.models.bundle import AvatarBundle


def checkpoint_to_resume(bundle: AvatarBundle, stage: str, resume: bool, progress: str) -> Path | None:
    """The bundle's checkpoint of `stage` when `resume` asks for one and there is one, else None
    (saying so when one was asked for). The caller loads it and reports its step with `resumed`."""
    if not resume:
        return None
    found = bundle.checkpoints(stage)
    if not found:
        note(progress, f"no checkpoint at {bundle.checkpoint_path(stage)}; starting a new run")
        return None
    return found[0]


def resumed(progress: str, path: Path, step: int) -> None:
    note(progress, f"resuming from step {step} ({path})")
