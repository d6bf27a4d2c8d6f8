"""The worker's methods: what the Blender add-on can ask of the core.

Each is a `Method` (emotalker/worker/server.py): a params schema, the dataclass
beside it here, checked as the request arrives, and a function taking (params,
ctx) that returns a JSON-able dict, and the paths it reads and writes, which the
worker checks against the folders its client declared before the job runs.
Arrays travel as files (.npz/.npy) in the folder the add-on names, never inline
in the protocol.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from emotalker.bake.clip import ClipSpec, RunOptions
from emotalker.core.base.emotions import EMOTIONS, NEUTRAL, one_hot
from emotalker.core.models.bundle import STAGE_FILES, AvatarBundle
from emotalker.core.base.errors import EmoTalkerError, InputError
from emotalker.core.base.fileio import atomic_path
from emotalker.core.rig.flame import FlameModel
from emotalker.core.training.pipeline import TrainAllConfig
from emotalker.worker.server import Method, PathUse


STAGES = tuple(STAGE_FILES)
PIXELS_FILE = "pixels.rgba"
"""render_frame's output: raw float32 RGBA [height, width, 4], scene-linear, premultiplied, bottom row first
(bake.video.blender_rgba), rewritten for every frame; the reply carries its width and height."""


@dataclass(frozen=True)
class AvatarProxyParams:
    """`avatar_proxy`: the FLAME proxy of an avatar, for the add-on's mesh and rig."""

    avatar: str
    """Avatar bundle folder."""
    out: str
    """Folder to write proxy.npz into."""


@dataclass(frozen=True)
class BakeParams:
    """`bake`: one clip, as `emotalker bake` bakes it."""

    clip: ClipSpec
    """What to bake (emotalker/bake/clip.py ClipSpec); with no output asked for, the PLY sequence."""
    run: RunOptions = field(default_factory=RunOptions)
    """How (RunOptions); its `progress` is the protocol's own: progress events on the job's id."""


@dataclass(frozen=True)
class RenderFrameParams:
    """`render_frame`: one frame of an avatar from a camera, for the viewport or F12."""

    avatar: str
    """Avatar bundle folder."""
    cache: str
    """Folder holding the frame buffer the pixels are written into (PIXELS_FILE, one file reused for every
    frame: put it on a RAM-backed folder such as /dev/shm and the pixels never touch a disk)."""
    frame: int
    """The timeline frame."""
    viewmat: list[list[float]]
    """The camera's world-to-camera matrix [4][4], OpenCV axes."""
    K: list[list[float]]
    """The camera's intrinsics [3][3], in pixels."""
    width: int
    """Image width in pixels."""
    height: int
    """Image height in pixels."""
    curves: str | None = None
    """A FLAME curves .npz (e.g. a bake's <name>_flame.npz); without it the neutral face."""
    audio: str | None = None
    """The clip's audio, which Stage 2 reads (needed for an avatar with Stage 2 unless no_emotion)."""
    no_emotion: bool = False
    """Stage 1 alone even when the avatar has Stage 2."""
    camera_model: str = "pinhole"
    """The camera's model: "pinhole", or "ortho" for an orthographic camera (K's focal lengths then in
    pixels per metre; emotalker.core.render.camera)."""


@dataclass(frozen=True)
class TrainParams:
    """`train`: train an avatar from a dataset, as `emotalker train` does."""

    dataset: str
    """Dataset folder (emotalker-dataset/1)."""
    avatar: str
    """Avatar bundle folder to train into (created when missing; `a2e` and `emotion` add to an existing one)."""
    stage: Literal["all", "neutral", "a2e", "emotion"] = "all"
    """Every stage in turn, or one."""
    config: TrainAllConfig = field(default_factory=TrainAllConfig)
    """Each stage's settings (emotalker/core/training/pipeline.py); one stage reads its own section."""
    device: str = "auto"
    """auto | cpu | cuda."""
    resume: bool = True
    """Continue each stage from its checkpoint, so that a cancelled run goes on from the step it stopped at."""


def _out_dir(out: str) -> Path:
    if not out:
        raise InputError(None, "the request names no output folder ('out')")
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    return path


def avatar_proxy(params: AvatarProxyParams, ctx) -> dict:
    """The FLAME proxy the add-on builds its mesh, shape keys and armature from.

    Writes out/proxy.npz with v_template [V,3], faces [F,3], expr_dirs [E,V,3],
    joints [J,3] (rest), parents [J], weights [V,J]; returns its path and the
    bundle's description.
    """
    bundle = AvatarBundle.open(params.avatar)
    model = FlameModel.load(bundle.flame_path)
    joints = model.J_regressor @ model.v_template
    arrays = {
        "v_template": model.v_template,
        "faces": model.faces.astype(np.int32),
        "expr_dirs": np.ascontiguousarray(model.shapedirs[:, :, model.n_shape:].transpose(2, 0, 1)),
        "joints": joints.astype(np.float32),
        "parents": model.parents.astype(np.int32),
        "weights": model.weights,
    }
    path = _out_dir(params.out) / "proxy.npz"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    manifest = bundle.manifest()
    names = model.expr_names or [f"expr_{i:03d}" for i in range(model.n_expr)]
    return {
        "proxy": str(path),
        "expr_names": names,
        "emotions": list(EMOTIONS),
        "stages": sorted(s for s in ("neutral", "a2e", "emotion") if bundle.has_stage(s)),
        "fps": manifest.get("fps", 25),
    }


def bake(params: BakeParams, ctx) -> dict:
    """Bake a clip exactly as `emotalker bake` does, with progress through the protocol.

    A cancel stops at the next frame boundary; a later bake of the same inputs
    resumes. Returns the BakeResult as a dict.
    """
    from emotalker.bake.clip import bake_clip

    return bake_clip(params.clip.with_default_export(), replace(params.run, progress="json"),
                     progress_sink=ctx.progress).to_dict()


def train(params: TrainParams, ctx) -> dict:
    """Train as `emotalker train` does, with progress through the protocol, and an event as each stage
    ends: {"stage": "train <stage>", "finished": true, "summary": one line, "held_out_psnr": dB or null};
    before the first step, the plan: {"stage": "plan", "lines": [the CLI's lines], **TrainingPlan.to_dict()};
    after every stage (`all`), the avatar report, as `train all` writes it.

    A cancel stops at the next step, which is checkpointed first; the same request again resumes.
    Returns {"avatar": folder, "stages": {stage: {"summary", "held_out_psnr"}}}, and for `all` "report"
    (the page's path) or "report_error" (why it failed; the avatar is whole)."""
    from emotalker.bake.report_clip import write_avatar_report
    from emotalker.core.training.pipeline import held_out_psnr, stage_summary, stages_to_train, train_all

    outcome = {}

    def finished(stage: str, metrics: dict) -> None:
        outcome[stage] = {"summary": stage_summary(stage, metrics), "held_out_psnr": held_out_psnr(stage, metrics)}
        ctx.progress({"stage": f"train {stage}", "finished": True, **outcome[stage]})

    config, stages = stages_to_train(params.stage, params.config)
    train_all(params.dataset, params.avatar, config, device=params.device, progress="json", resume=params.resume,
              progress_sink=ctx.progress, stages=stages, on_stage=finished,
              on_plan=lambda plan: ctx.progress({"stage": "plan", "lines": plan.lines(), **plan.to_dict()}))
    if params.stage != "all":
        return {"avatar": params.avatar, "stages": outcome}
    ctx.progress({"stage": "report", "step": 0, "total": 1})
    try:
        report = {"report": str(write_avatar_report(params.avatar, params.dataset, device=params.device))}
    except (EmoTalkerError, OSError) as exc:  # the avatar is whole: a report that fails does not undo it
        report = {"report_error": str(exc)}
    return {"avatar": params.avatar, "stages": outcome, **report}


def _train_paths(params: TrainParams) -> PathUse:
    """The dataset, and the weights the config may name (CLIP text encoder, VGG, speech model), are read."""
    config = params.config
    return PathUse(read=(params.dataset, config.emotion.text_checkpoint, config.emotion.vgg_weights,
                         config.a2e.features.model_dir), write=(params.avatar,))


def _avatar(bundle: AvatarBundle, use_emotion: bool):
    """The avatar (core.models.avatar.Avatar), loaded once per worker while its files are unchanged.

    Viewport playback and animation renders ask for one frame at a time; loading
    the bundle each time would cost seconds a frame.
    """
    stamps = tuple(p.stat().st_mtime_ns for p in (bundle.flame_path, *(bundle.stage_path(s) for s in STAGES))
                   if p.exists())
    return _cached_avatar(str(bundle.root.resolve()), use_emotion, stamps)


@functools.lru_cache(maxsize=2)
def _cached_avatar(root: str, use_emotion: bool, stamps: tuple):
    from emotalker.core.models.avatar import Avatar

    return Avatar.open(AvatarBundle.open(root), use_emotion=use_emotion)


def _file_stamp(path: str) -> tuple[str, int, int]:
    """(resolved path, mtime, size): a cache key that changes when the file is rewritten."""
    resolved = Path(path).resolve()
    try:
        st = resolved.stat()
    except OSError as e:
        raise InputError(path, f"cannot read it: {e.strerror}") from None
    return str(resolved), st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=4)
def _cached_curves(stamp: tuple[str, int, int], n_expr: int):
    """A bake's FLAME curves, read once while the file is unchanged (the viewport asks frame by frame)."""
    from emotalker.bake.engine import FlameCurves

    return FlameCurves.load(stamp[0], n_expr)


@functools.lru_cache(maxsize=2)
def _cached_audio_windows(stamp: tuple[str, int, int], features, fps: float):
    """Stage 2's AudioWindows of a clip's audio, its features computed once per audio file, feature set
    and fps (a frame's window does not depend on the others asked for)."""
    from emotalker.core.audio.features import AudioWindows
    from emotalker.core.audio.waveform import load_audio

    return AudioWindows(load_audio(stamp[0]), features, fps)


def render_frame(params: RenderFrameParams, ctx) -> dict:
    """Render one frame of an avatar for the viewport or F12.

    Writes <cache>/PIXELS_FILE, the pixels as Blender's buffers take them (so that
    Blender's UI thread only copies them), and returns its path, width and height.
    """
    import torch

    from emotalker.bake.engine import FlameCurves, FrameProducer
    from emotalker.bake.video import blender_rgba
    from emotalker.core.models.avatar import render_avatar
    from emotalker.core.render.camera import Camera

    camera = Camera.from_dict({"format": "emotalker-camera/1", "viewmat": params.viewmat, "K": params.K,
                               "width": params.width, "height": params.height, "model": params.camera_model},
                              source="render_frame camera")
    bundle = AvatarBundle.open(params.avatar)
    avatar = _avatar(bundle, not params.no_emotion)
    frame = params.frame
    if params.curves:
        curves = _cached_curves(_file_stamp(params.curves), avatar.stage1.flame_model.n_expr)
        if not curves.frame_start <= frame <= curves.frame_end:
            raise InputError(params.curves, f"frame {frame} is outside the curves' frames "
                                            f"{curves.frame_start}..{curves.frame_end}")
        rows = curves.rows(np.array([frame]))
        emotion, intensity = curves.emotion_weights[rows], curves.intensity[rows]
        blink = curves.eyelids[rows, 0]
        curves = FlameCurves(*(getattr(curves, k)[rows] for k in ("expr", "jaw", "neck", "eyes", "eyelids",
                                                                    "emotion_weights", "intensity")),
                             fps=curves.fps, frame_start=frame)
    else:
        n = avatar.stage1.flame_model.n_expr
        z = lambda *s: np.zeros(s, np.float32)  # noqa: E731
        emotion = one_hot([NEUTRAL])
        intensity, blink = z(1), z(1)
        curves = FlameCurves(z(1, n), z(1, 3), z(1, 3), z(1, 6), z(1, 2), emotion, intensity, 25.0, frame)
    stage2 = {}
    if avatar.uses_emotion:
        if not params.audio:
            raise InputError(bundle.stage_path("emotion"), "render_frame needs the clip's 'audio' for this avatar's "
                                                           "Stage 2 (or pass no_emotion)")
        from emotalker.core.models.emotion_deformer import camera_code

        windows = _cached_audio_windows(_file_stamp(params.audio), avatar.audio_features, curves.fps)
        # Frames past the sound hold the nearest window it covers, as the bake's timeline does.
        stage2 = {"audio": lambda frames: windows(frames - 1, hold_ends=True),
                  "camera": camera_code(camera.viewmat, camera.model)}
    gaussians = FrameProducer(avatar, curves, emotion, intensity, blink, chunk=1, **stage2)(frame)
    with torch.inference_mode():
        out = render_avatar(gaussians, camera)
    path = Path(params.cache) / PIXELS_FILE
    with atomic_path(path) as tmp:
        blender_rgba(out.rgb[0], out.alpha[0]).tofile(tmp)
    return {"path": str(path), "width": camera.width, "height": camera.height}


def _bake_paths(params: BakeParams) -> PathUse:
    clip = params.clip
    return PathUse(read=(clip.avatar, clip.audio, clip.tracks, clip.camera, clip.flame_curves), write=(clip.out,))


METHODS = {
    "avatar_proxy": Method(AvatarProxyParams, avatar_proxy, lambda p: PathUse(read=(p.avatar,), write=(p.out,))),
    "bake": Method(BakeParams, bake, _bake_paths),
    "render_frame": Method(RenderFrameParams, render_frame,
                           lambda p: PathUse(read=(p.avatar, p.curves, p.audio), write=(p.cache,))),
    "train": Method(TrainParams, train, _train_paths),
}
