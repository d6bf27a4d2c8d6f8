"""Bake one clip: avatar + audio + emotion tracks -> FLAME curves, PLY sequence, PNG frames, MP4.

`bake_clip(ClipSpec(...), RunOptions(...))` is what `emotalker bake`, each clip
of `emotalker bake-batch` and the worker's `bake` method run. `ClipSpec` is what
the clip is (inputs, frame range, outputs and how they look: everything that
changes what is written); `RunOptions` is how this run goes about it (device,
threads, batch size, progress, starting over). Steps:

1. read and check every input first (avatar stages, tracks, audio, curves,
   camera, frame range), so that bad input fails before anything is written;
2. FLAME curves: `--flame-curves` as given, else the avatar's A2E run with the
   tracks' per-frame emotion weights and intensity, eyelids from the blink
   track; written to `<out>/<name>_flame.npz` for editing and `--flame-curves`;
3. the resumable frame loop (emotalker.bake.sequence) over the frame range:
   per-frame Gaussians (core.models.avatar.Avatar: Stage 1, + Stage 2 when present, which
   also reads the frame's audio window and the camera's direction) to
   `<name>_NNNNNN.ply` (and/or `.spz`, `.compressed.ply`, the USD's samples in
   `<name>.usd-frames/`) and/or rendered `<name>_NNNNNN.png`;
4. the sidecars `<name>.json` (PLY), `<name>.spz.json`, `<name>.compressed-ply.json`,
   `<name>.usdc` (assembled from its samples), then `<name>.mp4` with the audio (from the PNGs).

Outputs in `out`: `<name>_flame.npz`, `<name>_NNNNNN.ply`, `<name>.json`, the compressed
frames and their sidecars (docs/exports.md), `<name>.usdc`, `<name>_NNNNNN.png`, `<name>_camera.json`,
`<name>.mp4`. `--preset unity` is `--ply --sh-degree 3 --up-axis y`. `--mp4` renders the PNG
frames too (they are what the video is made of, and what a re-run resumes from).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

import numpy as np

from emotalker.core.base.errors import InputError
from emotalker.core.base.limits import (MAX_AUDIO_SECONDS, MAX_CHUNK, MAX_FRAMES, MAX_IMAGE_SIDE, MAX_THREADS,
                                        check_fps, check_range)

if TYPE_CHECKING:
    from emotalker.bake.engine import FlameCurves
    from emotalker.core.models.avatar import Avatar
    from emotalker.bake.tracks import Tracks
    from emotalker.core.models.bundle import AvatarBundle
    from emotalker.core.render.camera import Camera
    from emotalker.core.rig.flame import FlameModel

DEFAULT_FPS = 25.0


@dataclass(frozen=True)
class ClipSpec:
    """What a clip is: its inputs, its frames, the outputs wanted and how they look.

    Every field changes what is written. Paths are strings. The `bake` command's
    options, a batch manifest's clip entries and the worker's `bake` params
    (`clip`) are these fields.
    """

    avatar: str
    """Avatar bundle folder (Stage 1 at least; A2E unless --flame-curves)."""
    audio: str
    """Dialogue audio (any format soundfile reads); timeline frame 1 is its start."""
    out: str
    """Output folder (a re-run resumes, skipping finished frames)."""
    tracks: str | None = None
    """Emotion tracks JSON (emotalker-tracks/1: emotion.<name>, intensity, blink)."""
    emotion: str | None = None
    """Shorthand for a constant emotion (one of the 8 MEAD categories) instead of tracks."""
    intensity: float | None = None
    """The shorthand's constant intensity, 0..3 (default 1)."""
    ply: bool = False
    """Write the PLY sequence <name>_NNNNNN.ply and its <name>.json sidecar."""
    spz: bool = False
    """Write the SPZ sequence <name>_NNNNNN.spz (Niantic SPZ v3) and its <name>.spz.json sidecar."""
    compressed_ply: bool = False
    """Write PlayCanvas compressed PLY frames <name>_NNNNNN.compressed.ply and their <name>.compressed-ply.json sidecar."""
    usd: bool = False
    """Write <name>.usdc: time-sampled Gaussian splats, the FLAME rig animated (UsdSkel) and the audio (needs the usd
    extra; per-frame samples in <name>.usd-frames/ for resuming)."""
    preset: Literal["unity"] | None = None
    """A consumer's PLY preset: unity = the PLY sequence at SH degree 3 (all 45 f_rest, zero-padded), y up, for
    aras-p's UnityGaussianSplatting importer (docs/exports.md)."""
    png: bool = False
    """Write RGBA PNG frames <name>_NNNNNN.png."""
    mp4: bool = False
    """Write <name>.mp4 with the audio (renders the PNG frames too)."""
    frames: str | None = None
    """Timeline frame range START:END, inclusive (default: the whole audio)."""
    fps: float | None = None
    """Frame rate (default: the tracks file's own, which it must state; with --emotion, the avatar's, else 25)."""
    camera: str | None = None
    """Camera JSON (emotalker-camera/1: OpenCV viewmat, K, width, height); default: a front camera."""
    resolution: int = 512
    """Width and height of the default front camera."""
    flame_curves: str | None = None
    """Per-frame FLAME curves .npz to use instead of running A2E (e.g. an edited <name>_flame.npz)."""
    sh_degree: Literal[0, 1, 2, 3] | None = None
    """SH degree of the PLY frames (default: the avatar's)."""
    up_axis: Literal["y", "z"] = "y"
    """Up axis of the PLY frames (z for Blender / Unreal)."""
    name: str | None = None
    """File name stem of the outputs (default: the audio's)."""
    no_emotion: bool = False
    """Stage 1 alone even when the avatar has Stage 2."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """The MP4's background colour, RGB in 0..1 (the PNG frames keep their alpha)."""

    def with_default_export(self) -> ClipSpec:
        """This clip, asking for the PLY sequence (the bake's main product) when it asks for no output."""
        return self if self.exports_anything() else replace(self, ply=True)

    def exports_anything(self) -> bool:
        return any((self.ply, self.spz, self.compressed_ply, self.usd, self.preset, self.png, self.mp4))

    def with_preset(self) -> ClipSpec:
        """This clip with its preset's fields set (the unity preset: --ply --sh-degree 3 --up-axis y)."""
        if self.preset is None:
            return self
        return replace(self, ply=True, sh_degree=3, up_axis="y", preset=None)

    def encodings(self) -> list[str]:
        """The Gaussian frame encodings asked for (emotalker.bake.ply.ENCODINGS), after the preset."""
        clip = self.with_preset()
        return [e for e, wanted in (("ply", clip.ply), ("spz", clip.spz), ("compressed-ply", clip.compressed_ply))
                if wanted]


@dataclass(frozen=True)
class RunOptions:
    """How one bake runs: where, how fast, how it reports, whether it may start over.

    None of these says what the clip is. `chunk` is still part of the resume
    fingerprint: batched products round differently for other batch sizes.
    """

    device: str = "auto"
    """auto | cpu | cuda (auto: CUDA when PyTorch sees a GPU)."""
    threads: int | None = None
    """CPU threads for torch and the compiled kernels (default: torch's); the frames are the same whatever
    the count."""
    chunk: int = 8
    """Frames evaluated at once (more is faster and takes more memory); a resumed bake keeps its chunk."""
    overwrite: bool = False
    """Delete frames baked from other inputs and start over."""
    progress: Literal["bar", "json", "none"] = "bar"
    """How progress shows: a bar, JSON lines on stdout, or nothing."""
    max_frames: int = MAX_FRAMES
    """Refuse a clip whose audio is more frames than this at the bake's fps (memory grows with the frames)."""
    max_seconds: float = MAX_AUDIO_SECONDS
    """Refuse audio longer than this many seconds (read from the file's header before decoding)."""


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


@dataclass(frozen=True)
class ClipInputs:
    """A clip's inputs, opened and checked (step 1) before anything is written."""

    clip: ClipSpec
    name: str
    """The outputs' file name stem."""
    out: Path
    device: Any
    """The torch.device the avatar runs on."""
    bundle: AvatarBundle
    flame: FlameModel
    tracks: Tracks
    """At the bake's fps (the shorthand's too)."""
    fps: float
    samples: np.ndarray
    """The audio, mono 16 kHz."""
    n_audio: int
    """The audio's length in frames at `fps`."""
    given_curves: FlameCurves | None
    """--flame-curves, read; None when the avatar's A2E makes the curves."""
    frames: tuple[int, int]
    """The timeline frames to bake, inclusive."""
    camera: Camera
    avatar: Avatar
    """The avatar, every stage loaded and checked."""
    sh_degree: int
    """The PLY frames' SH degree."""

    @property
    def frame_list(self) -> list[int]:
        return list(range(self.frames[0], self.frames[1] + 1))


def bake_clip(clip: ClipSpec, run: RunOptions = RunOptions(),
              progress_sink: Callable[[dict], None] | None = None, avatars: AvatarCache | None = None) -> BakeResult:
    """Bake one clip as the module docstring describes; InputError for any bad input, before writing.

    `progress_sink` receives the JSON progress events instead of stdout (the worker's). `avatars`: a
    process's cache of opened avatars, for a process that bakes clip after clip (a batch's Ray worker)."""
    inputs = open_clip(clip, run, avatars)
    # 2. FLAME curves (A2E runs on the whole clip: its band attention needs the context).
    curves = _a2e_curves(inputs) if inputs.given_curves is None else inputs.given_curves
    sequence = _bake_frames(inputs, curves, run, progress_sink)
    outputs = _write_outputs(inputs, curves)
    return BakeResult(inputs.out, inputs.name, inputs.frames[0], inputs.frames[1], sequence.written, sequence.skipped,
                      inputs.avatar.n_gaussians, inputs.avatar.uses_emotion, outputs)


def open_clip(clip: ClipSpec, run: RunOptions, avatars: AvatarCache | None = None) -> ClipInputs:
    """Step 1: every input of `clip` read and checked; InputError naming the input at fault."""
    from emotalker.core.audio.waveform import check_audio_length, duration_frames, load_audio
    from emotalker.core.base.device import resolve_device
    from emotalker.core.base.threads import use_threads
    from emotalker.core.models.bundle import AvatarBundle
    from emotalker.core.render.camera import Camera, front_camera
    from emotalker.core.rig.flame import FlameModel

    name = check_clip_fields(clip)
    clip = clip.with_preset()
    if clip.usd:
        from emotalker.bake.usd import require_usd

        require_usd()  # before anything is read or written
    _check_run(run)
    device = resolve_device(run.device)
    use_threads(run.threads)  # before any work, for torch and numba alike
    bundle = AvatarBundle.open(clip.avatar)
    bundle.require_stage("neutral")
    flame = FlameModel.load(bundle.flame_path)
    tracks, fps = _tracks_at_fps(clip, bundle)
    check_audio_length(clip.audio, fps, run.max_seconds, run.max_frames)
    samples = load_audio(clip.audio, max_seconds=run.max_seconds)
    n_audio = duration_frames(len(samples), fps)
    audio_range = f"the audio ({clip.audio}: frames 1..{n_audio} at {fps:g} fps)"
    tracks.require_keys_within(1, n_audio, audio_range)
    curves, first, last = _given_curves(clip, bundle, flame.n_expr, fps, n_audio, audio_range)
    frames = parse_frames(clip.frames) or (first, last)
    if frames[0] < first or frames[1] > last:
        covered = audio_range if curves is None else f"frames {first}..{last} (audio and curves)"
        raise InputError("--frames", f"{frames[0]}:{frames[1]} reaches outside {covered}")
    camera = Camera.load(clip.camera) if clip.camera else front_camera(flame.v_template, clip.resolution)
    avatar = (avatars or AvatarCache(0)).open(bundle, device, use_emotion=not clip.no_emotion,
                                              sh_degree=clip.sh_degree)
    sh_degree = avatar.sh_degree if clip.sh_degree is None else clip.sh_degree
    return ClipInputs(clip, name, Path(clip.out), device, bundle, flame, tracks, fps, samples, n_audio, curves, frames,
                      camera, avatar, sh_degree)


class AvatarCache:
    """Avatars opened in this process, kept for the next clip of the same avatar (Avatar.open takes seconds).

    Keyed by the bundle's folder, its stage files' sizes and modification times (a retrained avatar is
    loaded afresh), the device and the options `Avatar.open` takes. An avatar is only read from once
    opened (inference, frozen weights), so clips sharing it bake the same bytes as clips that do not.
    `size` 0 keeps nothing (a one-clip process); `loads` counts the avatars actually opened.
    """

    def __init__(self, size: int = 2):
        self.size, self.loads = size, 0
        self._avatars: dict[tuple, Avatar] = {}

    def open(self, bundle: AvatarBundle, device: Any, use_emotion: bool, sh_degree: int | None) -> Avatar:
        from emotalker.core.models.avatar import Avatar

        files = [bundle.stage_path("neutral"), bundle.stage_path("emotion"), bundle.flame_path]
        stamps = tuple((os.stat(f).st_size, os.stat(f).st_mtime_ns) if os.path.exists(f) else None for f in files)
        key = (os.path.realpath(bundle.root), stamps, str(device), use_emotion, sh_degree)
        if key in self._avatars:
            self._avatars[key] = self._avatars.pop(key)  # most recently used last
            return self._avatars[key]
        avatar = Avatar.open(bundle, device, use_emotion=use_emotion, sh_degree=sh_degree)
        self.loads += 1
        if self.size:
            while len(self._avatars) >= self.size:
                self._avatars.pop(next(iter(self._avatars)))
            self._avatars[key] = avatar
        return avatar


def check_clip_fields(clip: ClipSpec) -> str:
    """The values of `clip` no type says are wrong (outputs, axis, degree, name, limits), checked before any
    file is read; returns the file name stem. A batch manifest's clips are checked with it as it is read."""
    if not clip.exports_anything():
        raise InputError(None, "nothing to export: give --ply, --spz, --compressed-ply, --usd, --preset, --png and/or --mp4")
    if clip.up_axis not in ("y", "z"):
        raise InputError("--up-axis", f"must be y or z, got {clip.up_axis!r}")
    if clip.sh_degree is not None and not 0 <= clip.sh_degree <= 3:
        raise InputError("--sh-degree", f"must be 0..3, got {clip.sh_degree}")
    if clip.preset not in (None, "unity"):
        raise InputError("--preset", f"must be unity, got {clip.preset!r}")
    if clip.preset == "unity" and (clip.sh_degree not in (None, 3) or clip.up_axis != "y"):
        raise InputError("--preset", "unity writes SH degree 3, y up (the layout of aras-p's importer); "
                                     "drop --sh-degree / --up-axis or the preset")
    name = clip.name or default_name(clip.audio)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise InputError("--name", f"{name!r} must be letters, digits, '.', '_' or '-'")
    check_range(clip.resolution, 1, MAX_IMAGE_SIDE, "--resolution", "the resolution")
    if clip.fps is not None:
        check_fps(clip.fps, "--fps")
    parse_frames(clip.frames)
    return name


def _check_run(run: RunOptions) -> None:
    """The run options' limits (threads, chunk, the clip length limits themselves)."""
    if run.threads is not None:
        check_range(run.threads, 1, MAX_THREADS, "--threads", "the thread count")
    check_range(run.chunk, 1, MAX_CHUNK, "--chunk", "the chunk")
    check_range(run.max_frames, 1, 2**31 - 1, "--max-frames", "the frame limit")
    if not run.max_seconds > 0:
        raise InputError("--max-seconds", f"must be positive, got {run.max_seconds!r}")


def _tracks_at_fps(clip: ClipSpec, bundle) -> tuple[Tracks, float]:
    """The clip's tracks (file or shorthand) and the bake's fps."""
    from emotalker.bake.tracks import Tracks, load_tracks_or_shorthand

    tracks = load_tracks_or_shorthand(clip.tracks, clip.emotion, clip.intensity, clip.fps or None)
    fps = _resolve_fps(clip, tracks, bundle)
    if clip.tracks is None:  # the shorthand was made before fps was known
        tracks = Tracks(fps, tracks.channels, tracks.source)
    return tracks, fps


def _resolve_fps(clip: ClipSpec, tracks, bundle) -> float:
    """--fps, else the tracks file's fps, else the avatar's, else 25; a clash with the tracks file is an error."""
    if clip.tracks is not None:
        if clip.fps and abs(clip.fps - tracks.fps) > 1e-6:
            raise InputError(clip.tracks, f"tracks are keyed at {tracks.fps:g} fps but --fps is {clip.fps:g}")
        return float(tracks.fps)
    if clip.fps is not None:
        return float(clip.fps)  # checked with the clip's other fields
    return check_fps(bundle.manifest().get("fps") or DEFAULT_FPS, bundle.manifest_path)


def _given_curves(clip: ClipSpec, bundle, n_expr: int, fps: float, n_audio: int,
                  audio_range: str) -> tuple[FlameCurves | None, int, int]:
    """(--flame-curves read or None, first, last): the frames the curves and the audio both cover."""
    from emotalker.bake.engine import FlameCurves

    if clip.flame_curves is None:
        if not bundle.has_stage("a2e"):
            raise InputError(bundle.root, "this avatar has no a2e stage, so it cannot turn audio into motion: "
                                          "run `emotalker train a2e` or pass --flame-curves")
        return None, 1, n_audio
    curves = FlameCurves.load(clip.flame_curves, n_expr)
    if abs(curves.fps - fps) > 1e-6:
        raise InputError(clip.flame_curves, f"curves are at {curves.fps:g} fps, the bake at {fps:g} fps")
    first, last = max(1, curves.frame_start), min(n_audio, curves.frame_end)
    if last < first:
        raise InputError(clip.flame_curves, f"curves cover frames {curves.frame_start}..{curves.frame_end}, "
                                            f"outside {audio_range}")
    return curves, first, last


def _a2e_curves(inputs: ClipInputs) -> FlameCurves:
    """The avatar's A2E over the whole audio, driven by the tracks' per-frame values."""
    from emotalker.bake.engine import curves_from_a2e

    per_frame = inputs.tracks.evaluate(np.arange(1, inputs.n_audio + 1))
    return curves_from_a2e(inputs.bundle, inputs.samples, per_frame.emotion, per_frame.intensity, per_frame.blink,
                           inputs.fps, inputs.device)


def _bake_frames(inputs: ClipInputs, curves: FlameCurves, run: RunOptions,
                 progress_sink: Callable[[dict], None] | None):
    """Step 3: the resumable frame loop over the clip's frames -> its SequenceResult."""
    from emotalker.bake.sequence import run_sequence

    producer = _frame_producer(inputs, curves, run.chunk)
    return run_sequence(inputs.frame_list, producer, _frame_sinks(inputs), out_dir=inputs.out,
                        fingerprint=_fingerprint(inputs, run.chunk), overwrite=run.overwrite, progress=run.progress,
                        stage="bake", progress_sink=progress_sink)


def _frame_producer(inputs: ClipInputs, curves: FlameCurves, chunk: int):
    """Each frame's Gaussians from the curves and the tracks' values at the curves' rows."""
    from emotalker.bake.engine import FrameProducer
    from emotalker.core.audio.features import AudioWindows
    from emotalker.core.models.emotion_deformer import camera_code

    curve_frames = np.arange(curves.frame_start, curves.frame_end + 1)
    per_row = inputs.tracks.evaluate(curve_frames)
    avatar = inputs.avatar
    # Stage 2 reads each frame's audio window and the camera it is seen from (the render camera;
    # the default front camera for a PLY-only bake).
    stage2 = {}
    if avatar.uses_emotion:
        windows = AudioWindows(inputs.samples, avatar.audio_features, inputs.fps)
        stage2 = {"audio": lambda frames: windows(frames - 1, hold_ends=True),  # timeline frame 1 is audio frame 0
                  "camera": camera_code(inputs.camera.viewmat, inputs.camera.model).to(inputs.device)}
    return FrameProducer(avatar, curves, per_row.emotion, per_row.intensity, per_row.blink,
                         chunk=chunk, device=inputs.device, source=inputs.bundle.root, **stage2)


def _frame_sinks(inputs: ClipInputs) -> list:
    """The per-frame outputs the clip asks for: Gaussian frames (PLY, SPZ, compressed PLY), the USD's samples,
    rendered PNGs."""
    from emotalker.bake.ply import ply_sink
    from emotalker.bake.video import png_sink

    clip, camera = inputs.clip, inputs.camera
    sinks = [ply_sink(inputs.out, inputs.name, sh_degree=inputs.sh_degree, up_axis=clip.up_axis,
                      count=inputs.avatar.n_gaussians, encoding=encoding) for encoding in clip.encodings()]
    if clip.usd:
        from emotalker.bake.usd import usd_sink

        sinks.append(usd_sink(inputs.out, inputs.name, sh_degree=inputs.sh_degree, count=inputs.avatar.n_gaussians))
    if clip.png or clip.mp4:
        sinks.append(png_sink(inputs.out, inputs.name, lambda g: render_rgba(g, camera)))
    return sinks


def _fingerprint(inputs: ClipInputs, chunk: int) -> dict:
    """Whatever determines the frames' content: a re-run with another fingerprint is refused."""
    from emotalker.bake.sequence import file_digest

    clip, bundle = inputs.clip, inputs.bundle
    return {
        "neutral": file_digest(bundle.stage_path("neutral")), "flame_model": file_digest(bundle.flame_path),
        "emotion": file_digest(bundle.stage_path("emotion")) if inputs.avatar.uses_emotion else None,
        "curves": file_digest(clip.flame_curves) if clip.flame_curves else file_digest(bundle.stage_path("a2e")),
        "audio": file_digest(clip.audio), "tracks": inputs.tracks.to_dict(), "fps": inputs.fps,
        "sh_degree": inputs.sh_degree, "up_axis": clip.up_axis, "camera": inputs.camera.to_dict(), "chunk": chunk,
    }


def _write_outputs(inputs: ClipInputs, curves: FlameCurves) -> dict[str, str]:
    """Step 4: curves, sidecar, camera and video -> {output kind: path}.

    Written after the frame loop, which refuses a folder baked from other inputs,
    so that a refused run leaves the earlier bake's files as they were."""
    clip, out, name = inputs.clip, inputs.out, inputs.name
    curves_path = out / f"{name}_flame.npz"
    if clip.flame_curves is None or Path(clip.flame_curves).resolve() != curves_path.resolve():
        curves.save(curves_path, inputs.flame.expr_names, audio=str(clip.audio))
    outputs: dict[str, str] = {"flame_curves": str(curves_path)}
    from emotalker.bake.ply import frame_pattern

    for encoding in clip.encodings():
        key = encoding.replace("-", "_")
        outputs[f"{key}_sidecar"] = str(_write_sidecar(inputs, encoding))
        outputs[key] = str(out / frame_pattern(name, encoding))
    if clip.usd:
        outputs["usd"] = str(_write_usd(inputs, curves))
    if clip.png or clip.mp4:
        from emotalker.core.base.fileio import write_json

        camera_path = out / f"{name}_camera.json"
        write_json(camera_path, inputs.camera.to_dict())
        outputs["png"] = str(out / f"{name}_{{frame:06d}}.png")
        outputs["camera"] = str(camera_path)
    if clip.mp4:
        outputs["mp4"] = str(_encode_video(inputs))
    return outputs


def _write_sidecar(inputs: ClipInputs, encoding: str) -> Path:
    from emotalker.bake.ply import write_sidecar

    clip = inputs.clip
    return write_sidecar(inputs.out, inputs.name, fps=inputs.fps, frame_start=inputs.frames[0],
                         frame_end=inputs.frames[1], count=inputs.avatar.n_gaussians, sh_degree=inputs.sh_degree,
                         up_axis=clip.up_axis, audio=_relative(clip.audio, inputs.out), encoding=encoding)


def _write_usd(inputs: ClipInputs, curves: FlameCurves) -> Path:
    """`<name>.usdc` assembled from the frames' samples (emotalker.bake.usd)."""
    from emotalker.bake.usd import UsdClip, write_usd

    return write_usd(UsdClip(inputs.out, inputs.name, inputs.frames, inputs.fps, inputs.avatar.n_gaussians,
                             inputs.sh_degree, _relative(inputs.clip.audio, inputs.out), inputs.flame, curves))


def _encode_video(inputs: ClipInputs) -> Path:
    """`<name>.mp4` of the PNG frames with the clip's audio from the first frame's time."""
    from emotalker.bake.video import encode_mp4, png_path

    clip, out, name = inputs.clip, inputs.out, inputs.name
    video = out / f"{name}.mp4"
    encode_mp4([png_path(out, name, f) for f in inputs.frame_list], video, inputs.fps, audio=clip.audio,
               audio_start=(inputs.frames[0] - 1) / inputs.fps, background=clip.background)
    return video


def render_rgba(gaussians, camera) -> np.ndarray:
    """Render Gaussians (raw) from `camera` on the CPU -> uint8 RGBA [H,W,4] (straight alpha)."""
    import torch

    from emotalker.bake.video import to_rgba8
    from emotalker.core.base.threads import kernel_launch
    from emotalker.core.models.avatar import render_avatar

    with torch.inference_mode(), kernel_launch():  # the renderer's kernels are numba's
        out = render_avatar(gaussians, camera)
    return to_rgba8(out.rgb[0], out.alpha[0], premultiplied=True)


def _relative(path: str, start: Path) -> str:
    try:
        return os.path.relpath(Path(path).resolve(), start.resolve())
    except ValueError:  # another drive on Windows
        return str(Path(path).resolve())
