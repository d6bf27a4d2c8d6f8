"""One bake (or export) running in the worker, driven from Blender's main thread.

The job samples the avatar's animated emotion, intensity and blink at every
frame of the scene range into a tracks file (linear keys on every frame, so the
worker sees exactly the values Blender shows), submits `bake` to the worker and
is then polled like every WorkerJob (blender_addon/job.py).

The `bake` params are {"clip": {...}, "run": {...}}: the fields of the core's
ClipSpec (what the clip is) and RunOptions (how the run goes), see
emotalker/bake/clip.py; the worker checks them on arrival and names any field
it does not know. Plain dicts: the add-on never imports emotalker.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import session
from .avatar_objects import proxy_mesh
from .compat import sequencer_strips
from .curves import apply_curves, sample_property
from .job import WorkerJob
from .properties import EMOTIONS

BAKE_NAME = "bake"


def bake_dir(cache: Path) -> Path:
    return cache / "bake"


def curves_path(cache: Path) -> Path:
    return bake_dir(cache) / f"{BAKE_NAME}_flame.npz"


def audio_source(context, props) -> str:
    """The avatar's audio file, else the first sound strip's file in the sequencer ('' when neither)."""
    import bpy

    if props.audio_path:
        return bpy.path.abspath(props.audio_path)
    for strip in sequencer_strips(context.scene):
        if strip.type == "SOUND" and strip.sound is not None:
            return bpy.path.abspath(strip.sound.filepath, library=strip.sound.library)
    return ""


def write_tracks(avatar, frames: np.ndarray, fps: float, path: Path) -> Path:
    """The avatar's emotion/intensity/blink at each of `frames`, as an emotalker-tracks/1 file."""
    channels = {f"emotion.{name}": name for name in EMOTIONS}
    channels.update({"intensity": "intensity", "blink": "blink"})
    tracks = {}
    for channel, prop in channels.items():
        values = sample_property(avatar, prop, frames)
        tracks[channel] = {"interpolation": "linear", "keys": [[int(f), float(v)] for f, v in zip(frames, values)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": "emotalker-tracks/1", "fps": fps, "tracks": tracks}))
    return path


class BakeJob(WorkerJob):
    """One `bake` request: the clip's fields from the scene and the avatar's animated properties."""

    def __init__(self, context, avatar, out: Path, *, exports=("ply",), flame_curves: str | None = None,
                 camera: str | None = None, clip: dict | None = None, run: dict | None = None):
        """`clip` and `run`: further ClipSpec and RunOptions fields (e.g. {"name": ...}, {"overwrite": True})."""
        scene = context.scene
        props = avatar.emotalker
        frames = np.arange(scene.frame_start, scene.frame_end + 1)
        fps = scene.render.fps / scene.render.fps_base
        tracks = write_tracks(avatar, frames, fps, out / "tracks.json")
        clip_fields = {
            "avatar": bpy_abspath(props.avatar_path), "audio": audio_source(context, props), "out": str(out),
            "tracks": str(tracks), "frames": f"{frames[0]}:{frames[-1]}", "fps": fps, "name": BAKE_NAME,
            **{e: True for e in exports}, **(clip or {}),
        }
        if flame_curves:
            clip_fields["flame_curves"] = flame_curves
        if camera:
            clip_fields["camera"] = camera
        params = {"clip": clip_fields, "run": {"device": session.device(context), **(run or {})}}
        super().__init__(session.worker(context), "bake", params, write=[clip_fields["out"]],
                         read=[clip_fields.get(k) for k in ("avatar", "audio", "flame_curves", "camera")])


def apply_bake(avatar, expr_names: list[str], cache: Path) -> int:
    """Load the bake's FLAME curves onto the proxy and rig as F-curves; returns how many were written."""
    with np.load(curves_path(cache), allow_pickle=False) as npz:
        curves = {k: npz[k] for k in npz.files}
    count = apply_curves(avatar, proxy_mesh(avatar), curves, expr_names)
    avatar.emotalker.baked = True
    return count


def bpy_abspath(path: str) -> str:
    import bpy

    return bpy.path.abspath(path) if path else ""
