"""The avatar report: one self-contained HTML page (`<avatar>/report.html`) to judge an avatar by eye.

    write_report(avatar_dir, dataset=None, out=None, clip_video=...)

It shows held-out PSNR/SSIM per stage and per emotion (heldout.py), ground truth beside the renders, the
emotion x intensity grid (grid.py), an A2E-driven clip of held-out audio as video, the training curves
each stage recorded in avatar.json (curves.py) and the training settings and times. Images and video are
embedded as `data:` URIs: the page reads no other file and nothing from the network.

Without a dataset (none given and the one avatar.json records is gone) the parts that need its frames
are left out, with a line saying why. The clip is made by the caller's `clip_video(avatar, dataset,
clip_id) -> (bytes, mime type)` (the bake path, which core may not import).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from emotalker.core.evaluation.report import page, sections
from emotalker.core.evaluation.report.grid import LEVELS, render_grid, report_clip
from emotalker.core.evaluation.report.heldout import Scene, score_heldout

ClipVideo = Callable[[Path, Path, str], tuple[bytes, str]]


def recorded_dataset(manifest: dict) -> str | None:
    """The dataset folder the bundle's stages record (Stage 1's first), when it is still there."""
    stages = manifest.get("stages", {})
    for stage in ("neutral", "emotion", "a2e"):
        path = stages.get(stage, {}).get("dataset")
        if path and (Path(path) / "dataset.json").is_file():
            return str(path)
    return None


def open_scene(bundle, dataset: str | os.PathLike, device) -> Scene:
    """The avatar with every stage it has, its A2E, and the dataset, at the avatar's training size."""
    from emotalker.core.datasets.dataset import Dataset
    from emotalker.core.models.avatar import Avatar

    avatar = Avatar.open(bundle, device)
    a2e = None
    if bundle.has_stage("a2e"):
        from emotalker.core.models.a2e import load_a2e

        a2e = load_a2e(bundle, device)[0]
    features = avatar.audio_features or (a2e.cfg.features if a2e is not None else None)
    neutral = bundle.manifest()["stages"].get("neutral", {})
    resolution = max(neutral["resolution"]) if neutral.get("resolution") else None
    background = tuple(neutral.get("background", (1.0, 1.0, 1.0)))
    return Scene(Dataset.open(dataset), avatar, a2e, features, resolution, background, device)


def data_sections(scene: Scene, bundle, clip_video: ClipVideo | None, frames: int) -> list[str]:
    """The parts made from the dataset's held-out frames: scores, samples, grid, clip."""
    rows = score_heldout(scene, frames)
    if not rows:
        return [page.note("The dataset has no test split: no held-out scores, renders, grid or clip.")]
    out = [sections.quality(rows), sections.samples(rows, scene.background)]
    clip = report_clip(scene.dataset)
    if scene.avatar.uses_emotion:
        from emotalker.core.base.emotions import EMOTIONS

        driver = "A2E from the clip's audio" if scene.a2e is not None else "the clip's tracking"
        out.append(sections.grid(render_grid(scene, clip), list(EMOTIONS), LEVELS, clip, driver, scene.background))
    else:
        out.append(page.note("No emotion x intensity grid: this avatar has no Stage 2 (emotion.safetensors)."))
    out.append(clip_section(scene, bundle, clip, clip_video))
    return out


def clip_section(scene: Scene, bundle, clip: str, clip_video: ClipVideo | None) -> str:
    if scene.a2e is None:
        return page.note("No A2E-driven clip: this avatar has no A2E model (a2e.safetensors).")
    if clip_video is None:
        return page.note("No A2E-driven clip: no video maker was given to this report.")
    from emotalker.core.base.errors import InputError

    info = scene.dataset.clip(clip)
    try:
        data, mime = clip_video(bundle.root, scene.dataset.root, clip)
    except InputError as exc:  # e.g. a clip without audio: the rest of the report still stands
        return page.note(f"No A2E-driven clip of held-out clip {clip}: {exc}")
    caption = f"Held-out clip {clip} ({info.emotion}, intensity {info.intensity:g}): A2E drives the face from its audio."
    return sections.clip_video(data, mime, caption)


def report_html(avatar_dir: str | os.PathLike, dataset: str | os.PathLike | None = None, *,
                clip_video: ClipVideo | None = None, device="cpu", frames: int = 8) -> str:
    """The report page of the avatar as a string (see the module docstring)."""
    from emotalker.core.models.bundle import AvatarBundle

    bundle = AvatarBundle.open(avatar_dir)
    manifest = bundle.manifest()
    dataset = str(dataset) if dataset is not None else recorded_dataset(manifest)
    parts = [sections.summary(bundle.root.resolve().name, manifest, dataset)]
    if dataset is None:
        recorded = manifest.get("stages", {}).get("neutral", {}).get("dataset")
        why = f"the dataset avatar.json records ({recorded}) is not there" if recorded else "avatar.json records none"
        parts.append(page.note(f"No held-out scores, renders, grid or clip: no dataset was given and {why}."))
    else:
        parts += data_sections(open_scene(bundle, dataset, device), bundle, clip_video, frames)
    parts += [sections.recorded(manifest), sections.curves(manifest), sections.settings(manifest)]
    return page.page(f"EmoTalker avatar report: {bundle.root.resolve().name}", [p for p in parts if p])


def write_report(avatar_dir: str | os.PathLike, dataset: str | os.PathLike | None = None,
                 out: str | os.PathLike | None = None, *, clip_video: ClipVideo | None = None, device="cpu",
                 frames: int = 8) -> Path:
    """Write the report (default `<avatar>/report.html`) atomically; returns its path."""
    from emotalker.core.base.fileio import atomic_path, check_output_file
    from emotalker.core.models.bundle import AvatarBundle

    AvatarBundle.open(avatar_dir)  # "not an avatar" before anything about the output file
    path = check_output_file(Path(avatar_dir) / "report.html" if out is None else out, ".html")
    html = report_html(avatar_dir, dataset, clip_video=clip_video, device=device, frames=frames)
    with atomic_path(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return path
