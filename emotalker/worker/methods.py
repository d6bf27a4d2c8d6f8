"""The worker's methods: what the Blender add-on can ask of the core.

Each takes (params, ctx) and returns a JSON-able dict. Arrays travel as files
(.npz/.npy) in the folder the add-on names, never inline in the protocol.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from emotalker.core.models.bundle import EMOTIONS, STAGE_FILES, AvatarBundle
from emotalker.core.base.errors import InputError
from emotalker.core.base.fileio import atomic_path
from emotalker.core.rig.flame import FlameModel


STAGES = tuple(STAGE_FILES)


def _out_dir(params: dict) -> Path:
    if not params.get("out"):
        raise InputError(None, "the request names no output folder ('out')")
    out = Path(params["out"])
    out.mkdir(parents=True, exist_ok=True)
    return out


def avatar_proxy(params: dict, ctx) -> dict:
    """The FLAME proxy the add-on builds its mesh, shape keys and armature from.

    params: avatar (bundle folder), out (folder). Writes out/proxy.npz with
    v_template [V,3], faces [F,3], expr_dirs [E,V,3], joints [J,3] (rest),
    parents [J], weights [V,J]; returns its path and the bundle's description.
    """
    bundle = AvatarBundle.open(params["avatar"])
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
    path = _out_dir(params) / "proxy.npz"
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


def bake(params: dict, ctx) -> dict:
    """Bake a clip exactly as `emotalker bake` does, with progress through the protocol.

    params: the BakeOptions fields (emotalker.bake.clip): avatar, audio, out and
    tracks (a file) or emotion/intensity, plus any of ply, png, mp4, frames,
    fps, camera, resolution, flame_curves, sh_degree, up_axis, name,
    no_emotion, overwrite, device. A cancel stops at the next frame boundary;
    a later bake of the same inputs resumes. Returns the BakeResult as a dict.
    """
    from emotalker.bake.clip import BakeOptions, bake_clip
    from emotalker.core.base.device import resolve_device

    fields = dict(params)
    fields["progress"] = "json"
    fields["device"] = str(resolve_device(fields.get("device", "auto")))
    if not any(fields.get(k) for k in ("ply", "png", "mp4")):
        fields["ply"] = True
    return bake_clip(BakeOptions.from_fields(fields), progress_sink=ctx.progress).to_dict()


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


def render_frame(params: dict, ctx) -> dict:
    """Render one frame of an avatar for the viewport or F12.

    params: avatar (bundle folder), cache (folder), frame (timeline frame),
    curves (a FLAME curves .npz, e.g. a bake's <name>_flame.npz; without it the
    neutral face), viewmat [4][4] (OpenCV, world-to-camera), K [3][3], width,
    height; audio (the clip's sound: Stage 2 reads it) and no_emotion, optional. Writes <cache>/frame_NNNNNN.npy, RGBA
    float32 [H,W,4] with straight alpha, and returns its path.
    """
    import torch

    from emotalker.bake.engine import FlameCurves, FrameProducer
    from emotalker.core.models.avatar import render_avatar
    from emotalker.core.render.camera import Camera

    for key in ("avatar", "cache", "frame", "viewmat", "K", "width", "height"):
        if key not in params:
            raise InputError(None, f"render_frame needs {key!r}")
    camera = Camera.from_dict({"format": "emotalker-camera/1", **{k: params[k] for k in ("viewmat", "K", "width", "height")}},
                              source="render_frame camera")
    bundle = AvatarBundle.open(params["avatar"])
    avatar = _avatar(bundle, not params.get("no_emotion", False))
    frame = int(params["frame"])
    if params.get("curves"):
        curves = FlameCurves.load(params["curves"], avatar.stage1.flame_model.n_expr)
        if not curves.frame_start <= frame <= curves.frame_end:
            raise InputError(params["curves"], f"frame {frame} is outside the curves' frames "
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
        emotion = np.eye(len(EMOTIONS), dtype=np.float32)[[EMOTIONS.index("neutral")]]
        intensity, blink = z(1), z(1)
        curves = FlameCurves(z(1, n), z(1, 3), z(1, 3), z(1, 6), z(1, 2), emotion, intensity, 25.0, frame)
    stage2 = {}
    if avatar.uses_emotion:
        if not params.get("audio"):
            raise InputError(bundle.stage_path("emotion"), "render_frame needs the clip's 'audio' for this avatar's "
                                                           "Stage 2 (or pass no_emotion)")
        from emotalker.core.audio.features import frame_audio_windows
        from emotalker.core.audio.waveform import load_audio
        from emotalker.core.models.emotion_deformer import camera_code

        stage2 = {"audio": frame_audio_windows(load_audio(params["audio"]), avatar.audio_features, curves.fps,
                                               np.array([frame - 1]), hold_ends=True),
                  "camera": camera_code(camera.viewmat)}
    gaussians = FrameProducer(avatar, curves, emotion, intensity, blink, chunk=1, **stage2)(frame)
    with torch.inference_mode():
        out = render_avatar(gaussians, camera)
    rgb, alpha = out.rgb[0].numpy(), out.alpha[0].numpy()
    straight = np.where(alpha > 1e-6, rgb / np.maximum(alpha, 1e-6), 0.0)
    rgba = np.concatenate([np.clip(straight, 0, 1), alpha], -1).astype(np.float32)
    cache = Path(params["cache"])
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"frame_{frame:06d}.npy"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, rgba)
    return {"path": str(path), "width": camera.width, "height": camera.height}


METHODS = {"avatar_proxy": avatar_proxy, "bake": bake, "render_frame": render_frame}
