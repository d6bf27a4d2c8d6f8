"""A dataset's contact sheet: one row per emotion, one column per intensity, a mid-clip frame in each cell."""

from __future__ import annotations

import os

import numpy as np

from emotalker.core.base.emotions import EMOTIONS
from emotalker.core.datasets.dataset import Dataset


def dataset_sheet(ds: Dataset, path: str | os.PathLike, thumb: int = 128, background: float = 0.18) -> None:
    """Write the sheet as a PNG. Empty cells (no clip of that emotion and intensity) stay blank."""
    from PIL import Image, ImageDraw

    from emotalker.core.base.fileio import atomic_path

    levels = sorted({c.intensity for c in ds.clips})
    emotions = [e for e in EMOTIONS if any(c.emotion == e for c in ds.clips)]
    label_w, label_h = 84, 18
    sheet = Image.new("RGB", (label_w + thumb * len(levels), label_h + thumb * len(emotions)), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for j, lv in enumerate(levels):
        held = any(c.held_out for c in ds.clips if c.intensity == lv)
        draw.text((label_w + j * thumb + 4, 3), f"{lv:g}" + (" (held out)" if held else ""), fill=(230, 230, 230))
    for i, emotion in enumerate(emotions):
        y = label_h + i * thumb
        draw.text((4, y + thumb // 2 - 6), emotion, fill=(230, 230, 230))
        for j, lv in enumerate(levels):
            clip = next((c for c in ds.clips if c.emotion == emotion and c.intensity == lv), None)
            if clip is None:
                continue
            rgba = ds.frame(clip.id, ds.n_frames(clip.id) // 2)
            rgb = rgba[..., :3] * rgba[..., 3:] + background * (1 - rgba[..., 3:])
            img = Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
            img.thumbnail((thumb, thumb))
            sheet.paste(img, (label_w + j * thumb, y))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG", optimize=True)
