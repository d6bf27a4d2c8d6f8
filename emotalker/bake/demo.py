"""`emotalker demo`: bake the built-in sample into a PLY sequence, an MP4 and a contact sheet.

The sample ships in the package: `emotalker/data/demo_avatar/` (a small avatar
bundle) and `emotalker/data/demo_speech.wav` (about 5 s of espeak-ng speech),
both made by `python tools/make_demo_avatar.py` (see that script for what it
trains and with which settings). The emotion tracks cross-fade from happy to sad
across the clip at intensity 2.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from emotalker.core.base.errors import InputError

DATA = Path(__file__).resolve().parent.parent / "data"
DEMO_AVATAR = DATA / "demo_avatar"
DEMO_SPEECH = DATA / "demo_speech.wav"
DEMO_OUT = "emotalker-demo"
DEMO_RESOLUTION = 256
SHEET_FRAMES = 8


def demo_tracks(n_frames: int, fps: float) -> dict:
    """Happy for the first quarter, a bezier cross-fade to sad over the middle half, sad to the end."""
    a, b = max(1, round(n_frames * 0.25)), max(2, round(n_frames * 0.75))
    return {"format": "emotalker-tracks/1", "fps": fps, "tracks": {
        "emotion.happy": {"interpolation": "bezier", "keys": [[1, 1.0], [a, 1.0], [b, 0.0]]},
        "emotion.sad": {"interpolation": "bezier", "keys": [[1, 0.0], [a, 0.0], [b, 1.0]]},
        "intensity": {"interpolation": "constant", "keys": [[1, 2.0]]},
    }}


def run_demo(out: str | Path = DEMO_OUT, resolution: int = DEMO_RESOLUTION, progress: str = "bar",
             log: Callable[[str], None] = print, avatar: Path = DEMO_AVATAR, speech: Path = DEMO_SPEECH,
             threads: int | None = None) -> dict:
    """Bake the sample into `out` on the CPU; returns {output kind: path}. Prints where each output is."""
    from emotalker.core.audio.waveform import duration_frames, load_audio
    from emotalker.core.models.bundle import AvatarBundle
    from emotalker.core.base.fileio import make_output_folder, write_json

    from emotalker.bake.clip import ClipSpec, RunOptions, bake_clip
    from emotalker.bake.tracks import Tracks
    from emotalker.bake.video import contact_sheet, png_path, write_png

    if not (avatar / "avatar.json").is_file() or not speech.is_file():
        raise InputError(avatar, "the built-in demo avatar or speech is missing from this installation; "
                                 "make them with `python tools/make_demo_avatar.py`")
    started = time.monotonic()
    out = make_output_folder(out)
    fps = float(AvatarBundle.open(avatar).manifest().get("fps") or 25.0)
    n_frames = duration_frames(len(load_audio(speech)), fps)
    tracks_doc = demo_tracks(n_frames, fps)
    tracks_path = out / "demo_tracks.json"
    write_json(tracks_path, tracks_doc)
    result = bake_clip(ClipSpec(avatar=str(avatar), audio=str(speech), out=str(out), tracks=str(tracks_path),
                                ply=True, mp4=True, resolution=resolution, name="demo"),
                       RunOptions(device="cpu", threads=threads, progress=progress))

    # Contact sheet: evenly spaced frames labelled with their emotion mix.
    from PIL import Image

    frames = np.linspace(result.frame_start, result.frame_end, SHEET_FRAMES).round().astype(int)
    mix = Tracks.from_dict(tracks_doc).evaluate(frames)
    happy, sad = mix.emotion[:, 5], mix.emotion[:, 6]
    images = [np.asarray(Image.open(png_path(out, "demo", int(f)))) for f in frames]
    labels = [f"{int(f)}: happy {h:.2f} sad {s:.2f}" for f, h, s in zip(frames, happy, sad)]
    sheet = out / "demo_contact_sheet.png"
    write_png(sheet, contact_sheet(images, labels, columns=4, label_height=14))

    outputs = {"ply sequence": result.outputs["ply"], "ply sidecar": result.outputs["ply_sidecar"],
               "mp4": result.outputs["mp4"], "contact sheet": str(sheet), "png frames": result.outputs["png"],
               "flame curves": result.outputs["flame_curves"], "tracks": str(tracks_path)}
    log(f"demo: {result.frame_end - result.frame_start + 1} frames ({result.written} baked now, {result.skipped} "
        f"already done), {result.n_gaussians} Gaussians a frame, in {time.monotonic() - started:.1f} s")
    for kind, path in outputs.items():
        log(f"  {kind:<14} {path}")
    return outputs
