"""The avatar bundle: one folder holding everything baking needs.

    avatar.json          format, version, sizes, emotions, fps, audio features,
                         provenance (dataset, steps, metrics) per stage
    flame_model.npz      the identity's rig
    neutral.safetensors  Stage 1
    a2e.safetensors      audio-to-expression
    emotion.safetensors  Stage 2
    checkpoints/         <stage>.ckpt.safetensors: a training run's state, to resume it

Each stage writes its own tensors file and its own section of avatar.json
(`update_manifest`), so a bundle trained only to Stage 1 still loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emotalker.core.base.emotions import EMOTIONS
from emotalker.core.base.errors import InputError
from emotalker.core.base.fileio import make_output_folder, read_json, write_json

FORMAT = "emotalker-avatar/1"
STAGE_FILES = {"neutral": "neutral.safetensors", "a2e": "a2e.safetensors", "emotion": "emotion.safetensors"}


@dataclass(frozen=True)
class AvatarBundle:
    root: Path

    @classmethod
    def create(cls, root: str | os.PathLike) -> "AvatarBundle":
        """Open `root` for writing, making the folder and a fresh avatar.json when absent."""
        bundle = cls(make_output_folder(root))
        if not bundle.manifest_path.exists():
            write_json(bundle.manifest_path, {"format": FORMAT, "version": 1, "emotions": list(EMOTIONS), "stages": {}})
        return bundle

    @classmethod
    def open(cls, root: str | os.PathLike) -> "AvatarBundle":
        """Open an existing bundle; InputError when it is not one."""
        bundle = cls(Path(root))
        if not bundle.root.is_dir():
            raise InputError(root, "avatar folder not found")
        manifest = read_json(bundle.manifest_path, "avatar manifest")
        if manifest.get("format") != FORMAT:
            raise InputError(bundle.manifest_path, f"not an EmoTalker avatar (format {manifest.get('format')!r}, expected {FORMAT!r})")
        return bundle

    @property
    def manifest_path(self) -> Path:
        return self.root / "avatar.json"

    @property
    def flame_path(self) -> Path:
        return self.root / "flame_model.npz"

    def stage_path(self, stage: str) -> Path:
        return self.root / STAGE_FILES[stage]

    def checkpoint_path(self, stage: str) -> Path:
        """Where training writes `stage`'s checkpoint (every stage alike)."""
        return self.root / "checkpoints" / f"{stage}.ckpt.safetensors"

    def checkpoints(self, stage: str) -> list[Path]:
        """`stage`'s checkpoint files, newest place first: `checkpoint_path`, then the bundle root,
        where A2E and Stage 2 runs interrupted before checkpoints/ existed left theirs."""
        places = [self.checkpoint_path(stage), self.root / f"{stage}.ckpt.safetensors"]
        return [p for p in places if p.is_file()]

    def has_stage(self, stage: str) -> bool:
        return self.stage_path(stage).is_file() and stage in self.manifest().get("stages", {})

    def require_stage(self, stage: str) -> Path:
        """The stage's tensors file; InputError saying which command makes it when missing."""
        if not self.has_stage(stage):
            raise InputError(self.root, f"this avatar has no {stage} stage yet (run `emotalker train {stage}` first)")
        return self.stage_path(stage)

    def manifest(self) -> dict[str, Any]:
        return read_json(self.manifest_path, "avatar manifest")

    def update_manifest(self, stage: str | None = None, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into avatar.json (into stages[stage] when given); written atomically."""
        manifest = self.manifest()
        target = manifest.setdefault("stages", {}).setdefault(stage, {}) if stage else manifest
        target.update(fields)
        write_json(self.manifest_path, manifest)
        return manifest


def load_stage_model(path: str | os.PathLike, fmt: str, what: str, build, device="cpu") -> tuple[Any, dict]:
    """A model file whose metadata holds `format`, `config` and `emotions` (A2E, Stage 2).

    build(config dict) -> the untrained nn.Module. Returns (model with the file's weights, in eval
    mode on `device`, metadata); one InputError naming the file when it is not a `what` model, was
    trained with another emotion list, or holds weights that do not fit its config.
    """
    from emotalker.core.base.fileio import load_tensors

    tensors, meta = load_tensors(path, device=str(device))
    if meta.get("format") != fmt:
        raise InputError(path, f"not an EmoTalker {what} model (format {meta.get('format')!r}, expected {fmt!r})")
    if list(meta.get("emotions", [])) != list(EMOTIONS):
        raise InputError(path, f"{what} model was trained with a different emotion list")
    try:
        model = build(meta["config"])
        model.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(path, f"{what} weights do not match their config ({exc})") from None
    return model.to(device).eval(), meta
