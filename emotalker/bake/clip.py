"""Bake one clip: avatar + audio + emotion tracks -> FLAME curves, PLY sequence, PNG frames, MP4.

`bake_clip(BakeOptions(...))` is what `emotalker bake`, each clip of
`emotalker bake-batch` and the worker's `bake` method run. Steps:

1. read and check every input first (avatar stages, tracks, audio, curves,
   camera, frame range), so that bad input fails before anything is written;
2. FLAME curves: `--flame-curves` as given, else the avatar's A2E run with the
   tracks' per-frame emotion weights and intensity, eyelids from the blink
   track; written to `<out>/<name>_flame.npz` for editing and `--flame-curves`;
3. the resumable frame loop (emotalker.bake.sequence) over the frame range:
   per-frame Gaussians (core.models.avatar.Avatar: Stage 1, + Stage 2 when present, which
   also reads the frame's audio window and the camera's direction) to
   `<name>_NNNNNN.ply` and/or rendered `<name>_NNNNNN.png`;
4. the sidecar `<name>.json` (PLY), then `<name>.mp4` with the audio (from the PNGs).

Outputs in `out`: `<name>_flame.npz`, `<name>_NNNNNN.ply`, `<name>.json`,
`<name>_NNNNNN.png`, `<name>_camera.json`, `<name>.mp4`. `--mp4` renders the PNG
frames too (they are what the video is made of, and what a re-run resumes from).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from emotalker.core.base.errors import InputError

DEFAULT_FPS = 25.0


@dataclass(frozen=True)
class BakeOptions:
    """One clip's bake. Paths as strings; `frames` "START:END" (timeline frames, inclusive)."""

    avatar: str
    audio: str
    out: str
    tracks: str | None = None
    emotion: str | None = None
    intensity: float | None = None
    ply: bool = False
    png: bool = False
    mp4: bool = False
    frames: str | None = None
    fps: float | None = None
    camera: str | None = None
    resolution: int = 512
    flame_curves: str | None = None
    sh_degree: int | None = None
    up_axis: str = "y"
    name: str | None = None
    no_emotion: bool = False
    overwrite: bool = False
    progress: str = "bar"
    device: str = "cpu"
    chunk: int = 8
    threads: int | None = None  # torch CPU threads (None: torch's default)
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)  # the MP4's; PNGs keep alpha

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> "BakeOptions":
        """From a batch manifest's clip fields (unknown fields are an InputError naming them)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(fields) - known - {"id"})
        if unknown:
            raise InputError(None, f"unknown clip fields {unknown}; expected some of {sorted(known)}")
        return cls(**{k: v for k, v in fields.items() if k in known})


@dataclass(frozen=True)
class BakeResult:
    out: Path
    name: str
    frame_start: int
    frame_end: int
    written: int
    skipped: int
    n_gaussians: int
    emotion_stage: bool
    outputs: dict

    def to_dict(self) -> dict:
        d = asdict(self)
        d["out"] = str(self.out)
        return d


def parse_frames(spec: str | None) -> tuple[int, int] | None:
    """'START:END' (inclusive timeline frames) -> (start, end); InputError naming --frames."""
    if spec is None:
        return None
    m = re.fullmatch(r"\s*(-?\d+)\s*:\s*(-?\d+)\s*", str(spec))
    if not m:
        raise InputError("--frames", f"expected START:END (e.g. 1:125), got {spec!r}")
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise InputError("--frames", f"END ({end}) is before START ({start})")
    return start, end


def default_name(audio: str) -> str:
    """The file name stem of the outputs: the audio's stem with only letters, digits, '.', '_', '-'."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(audio).stem).strip("._") or "clip"
    return stem


def bake_clip(opts: BakeOptions, progress_sink: Callable[[dict], None] | None = None,
              log: Callable[[str], None] = lambda s: None) -> BakeResult:
    """Bake one clip as the module docstring describes; InputError for any bad input, before writing."""
    import torch

    from emotalker.core.audio.features import frame_audio_windows
    from emotalker.core.audio.waveform import duration_frames, load_audio
    from emotalker.core.models.avatar import Avatar
    from emotalker.core.models.bundle import AvatarBundle
    from emotalker.core.models.emotion_deformer import camera_code
    from emotalker.core.rig.flame import FlameModel

    from emotalker.core.render.camera import Camera, front_camera
    from emotalker.bake.engine import FlameCurves, FrameProducer, curves_from_a2e
    from emotalker.bake.ply import ply_sink, write_sidecar
    from emotalker.bake.sequence import file_digest, run_sequence
    from emotalker.bake.tracks import Tracks, load_tracks_or_shorthand
    from emotalker.bake.video import encode_mp4, png_path, png_sink

    if not (opts.ply or opts.png or opts.mp4):
        raise InputError(None, "nothing to export: give --ply, --png and/or --mp4")
    if opts.up_axis not in ("y", "z"):
        raise InputError("--up-axis", f"must be y or z, got {opts.up_axis!r}")
    if opts.sh_degree is not None and not 0 <= opts.sh_degree <= 3:
        raise InputError("--sh-degree", f"must be 0..3, got {opts.sh_degree}")
    name = opts.name or default_name(opts.audio)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise InputError("--name", f"{name!r} must be letters, digits, '.', '_' or '-'")
    out = Path(opts.out)
    device = torch.device(opts.device)
    if opts.threads is not None:
        if opts.threads < 1:
            raise InputError("--threads", f"must be at least 1, got {opts.threads}")
        torch.set_num_threads(opts.threads)

    # 1. Inputs, all checked before anything is written.
    bundle = AvatarBundle.open(opts.avatar)
    bundle.require_stage("neutral")
    flame = FlameModel.load(bundle.flame_path)
    tracks = load_tracks_or_shorthand(opts.tracks, opts.emotion, opts.intensity, opts.fps or None)
    fps = _resolve_fps(opts, tracks, bundle)
    if opts.tracks is None:  # the shorthand was made before fps was known
        tracks = Tracks(fps, tracks.channels, tracks.source)
    samples = load_audio(opts.audio)
    n_audio = duration_frames(len(samples), fps)
    audio_range = f"the audio ({opts.audio}: frames 1..{n_audio} at {fps:g} fps)"
    tracks.require_keys_within(1, n_audio, audio_range)
    curves = None
    if opts.flame_curves is not None:
        curves = FlameCurves.load(opts.flame_curves, flame.n_expr)
        if abs(curves.fps - fps) > 1e-6:
            raise InputError(opts.flame_curves, f"curves are at {curves.fps:g} fps, the bake at {fps:g} fps")
        first, last = max(1, curves.frame_start), min(n_audio, curves.frame_end)
        if last < first:
            raise InputError(opts.flame_curves, f"curves cover frames {curves.frame_start}..{curves.frame_end}, "
                                                f"outside {audio_range}")
    else:
        if not bundle.has_stage("a2e"):
            raise InputError(bundle.root, "this avatar has no a2e stage, so it cannot turn audio into motion: "
                                          "run `emotalker train a2e` or pass --flame-curves")
        first, last = 1, n_audio
    frames = parse_frames(opts.frames) or (first, last)
    if frames[0] < first or frames[1] > last:
        raise InputError("--frames", f"{frames[0]}:{frames[1]} reaches outside "
                                     f"{audio_range if opts.flame_curves is None else f'frames {first}..{last} (audio and curves)'}")
    frame_list = list(range(frames[0], frames[1] + 1))
    camera = Camera.load(opts.camera) if opts.camera else front_camera(flame.v_template, opts.resolution)
    avatar = Avatar.open(bundle, device, use_emotion=not opts.no_emotion, sh_degree=opts.sh_degree)
    out_degree = avatar.sh_degree if opts.sh_degree is None else opts.sh_degree

    # 2. FLAME curves (A2E runs on the whole clip: its band attention needs the context).
    if curves is None:
        all_frames = tracks.evaluate(np.arange(1, n_audio + 1))
        curves = curves_from_a2e(bundle, samples, all_frames.emotion, all_frames.intensity, all_frames.blink, fps, device)
    curve_frames = np.arange(curves.frame_start, curves.frame_end + 1)
    per_row = tracks.evaluate(curve_frames)
    curves_path = out / f"{name}_flame.npz"

    # 3. The frame loop.
    # Stage 2 reads each frame's audio window and the camera it is seen from (the render camera;
    # the default front camera for a PLY-only bake).
    stage2 = {}
    if avatar.uses_emotion:
        stage2 = {"audio": frame_audio_windows(samples, avatar.audio_features, fps, curve_frames - 1, hold_ends=True),
                  "camera": camera_code(camera.viewmat).to(device)}
    producer = FrameProducer(avatar, curves, per_row.emotion, per_row.intensity, per_row.blink,
                             chunk=opts.chunk, device=device, **stage2)
    sinks = []
    if opts.ply:
        sinks.append(ply_sink(out, name, sh_degree=out_degree, up_axis=opts.up_axis, count=avatar.n_gaussians))
    if opts.png or opts.mp4:
        sinks.append(png_sink(out, name, lambda g: render_rgba(g, camera, opts.threads)))
    fingerprint = {
        "neutral": file_digest(bundle.stage_path("neutral")), "flame_model": file_digest(bundle.flame_path),
        "emotion": file_digest(bundle.stage_path("emotion")) if avatar.uses_emotion else None,
        "curves": file_digest(opts.flame_curves) if opts.flame_curves else file_digest(bundle.stage_path("a2e")),
        "audio": file_digest(opts.audio), "tracks": tracks.to_dict(), "fps": fps,
        "sh_degree": out_degree, "up_axis": opts.up_axis, "camera": camera.to_dict(), "chunk": opts.chunk,
    }
    result = run_sequence(frame_list, producer, sinks, out_dir=out, fingerprint=fingerprint, overwrite=opts.overwrite,
                          progress=opts.progress, stage="bake", progress_sink=progress_sink)

    # 4. Curves, sidecar and video: written after the loop, which refuses a folder baked from other
    # inputs, so that a refused run leaves the earlier bake's files as they were.
    if opts.flame_curves is None or Path(opts.flame_curves).resolve() != curves_path.resolve():
        curves.save(curves_path, flame.expr_names, audio=str(opts.audio))
    outputs: dict[str, str] = {"flame_curves": str(curves_path)}
    if opts.ply:
        audio_ref = _relative(opts.audio, out)
        outputs["ply_sidecar"] = str(write_sidecar(out, name, fps=fps, frame_start=frames[0], frame_end=frames[1],
                                                   count=avatar.n_gaussians, sh_degree=out_degree,
                                                   up_axis=opts.up_axis, audio=audio_ref))
        outputs["ply"] = str(out / f"{name}_{{frame:06d}}.ply")
    if opts.png or opts.mp4:
        from emotalker.core.base.fileio import write_json

        camera_path = out / f"{name}_camera.json"
        write_json(camera_path, camera.to_dict())
        outputs["png"] = str(out / f"{name}_{{frame:06d}}.png")
        outputs["camera"] = str(camera_path)
    if opts.mp4:
        video = out / f"{name}.mp4"
        encode_mp4((png_path(out, name, f) for f in frame_list), video, fps, audio=opts.audio,
                   audio_start=(frames[0] - 1) / fps, background=opts.background)
        outputs["mp4"] = str(video)
    return BakeResult(out, name, frames[0], frames[1], result.written, result.skipped, avatar.n_gaussians,
                      avatar.uses_emotion, outputs)


def render_rgba(gaussians, camera, threads: int | None = None) -> np.ndarray:
    """Render Gaussians (raw) from `camera` on the CPU -> uint8 RGBA [H,W,4] (straight alpha).

    `threads`: torch's thread count to restore afterwards: starting numba's parallel
    kernels resets the OpenMP thread count that torch shares.
    """
    import torch

    from emotalker.bake.video import to_rgba8
    from emotalker.core.models.avatar import render_avatar

    with torch.inference_mode():
        out = render_avatar(gaussians, camera)
    if threads is not None:
        torch.set_num_threads(threads)
    return to_rgba8(out.rgb[0], out.alpha[0], premultiplied=True)


def _resolve_fps(opts: BakeOptions, tracks, bundle) -> float:
    """--fps, else the tracks file's fps, else the avatar's, else 25; a clash with the tracks file is an error."""
    if opts.tracks is not None:
        if opts.fps and abs(opts.fps - tracks.fps) > 1e-6:
            raise InputError(opts.tracks, f"tracks are keyed at {tracks.fps:g} fps but --fps is {opts.fps:g}")
        return float(tracks.fps)
    if opts.fps is not None:
        if not opts.fps > 0:
            raise InputError("--fps", f"must be positive, got {opts.fps}")
        return float(opts.fps)
    return float(bundle.manifest().get("fps") or DEFAULT_FPS)


def _relative(path: str, start: Path) -> str:
    try:
        return os.path.relpath(Path(path).resolve(), start.resolve())
    except ValueError:  # another drive on Windows
        return str(Path(path).resolve())
