"""`make-sample`: a synthetic emotional talking-head dataset with ground truth for everything.

Per clip: a sentence spoken by espeak-ng (audio.wav), the mouth animated from
the phonemes espeak-ng reports (visemes with coarticulation, loudness, lips
shut on every p, b, m), an emotion at an intensity (expression, head pose,
skin colour and wrinkles), blinks, gaze, slight head motion and per-frame
camera jitter; the FLAME rig poses the head and Blender's Cycles renders it.

Each clip is built in `clips/.<id>.partial/` and moved into place when done,
so an interrupted run resumes where it stopped and never leaves a half clip.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from emotalker.core.base.emotions import EMOTIONS
from emotalker.core.datasets.dataset import ClipInfo, FRAME_NAME, Tracking, write_dataset_json
from emotalker.core.base.errors import InputError
from emotalker.core.base.fileio import make_output_folder, read_json, write_json
from emotalker.core.base.limits import MAX_IMAGE_SIDE, check_fps, check_number, check_range

from emotalker.sample.emotions import HELD_OUT_LEVELS, LEVELS, Skin, emotion_offsets
from emotalker.sample.phonemes import Espeak, Phoneme, Speech, Voice
from emotalker.sample.sentences import SENTENCES, SHORT_SENTENCES, VOICES
from emotalker.sample.visemes import MouthConfig, mouth_track, shut_lips, speech_envelope

AUDIO_RATE = 16000
CONFIG_FILE = ".make-sample.json"


@dataclass(frozen=True)
class SampleConfig:
    """How big a sample dataset to make, and how it is rendered."""

    clips: int = 44
    """Clips to make (from 40 on, the test split holds every emotion)."""
    resolution: int = 256
    """Width and height of the square frames, in pixels."""
    seed: int = 0
    """Seed of every random choice (emotions, sentences, voices, motion); the same seed makes the same dataset."""
    fps: float = 25.0
    """Frames a second."""
    duration: float = 3.0
    """Seconds a clip: the speech plus a pause either side."""
    samples: int = 3
    """Cycles samples a pixel."""
    short: bool = False
    """Speak short sentences (the ci preset)."""
    distance: float = 0.55
    """Metres from the camera to the head's centre plane."""
    pause: float = 0.2
    """Seconds of silence before and after the speech."""

    def check(self, source: str | os.PathLike) -> None:
        """InputError naming `source` (the dataset folder) and the first setting out of its range."""
        check_range(self.clips, 1, 10_000, source, "--clips")
        check_range(self.resolution, 32, MAX_IMAGE_SIDE, source, "--resolution")
        check_range(self.seed, 0, 2**32 - 1, source, "--seed")
        check_range(self.samples, 1, 4096, source, "samples")
        check_number(self.pause, 0.0, 10.0, source, "pause")
        check_fps(self.fps, source)
        # The speech needs room between the two pauses; a clip is at most ten minutes.
        check_number(self.duration, 2 * self.pause + 0.4, 600.0, source, "--duration")


PRESETS = {
    "ci": SampleConfig(clips=4, resolution=128, duration=1.2, samples=2, short=True),
    "default": SampleConfig(),
}


@dataclass(frozen=True)
class ClipPlan:
    id: str
    emotion: str
    intensity: float
    split: str
    held_out: bool
    index: int

    def info(self) -> ClipInfo:
        return ClipInfo(self.id, self.emotion, self.intensity, self.split, self.held_out)


def plan_clips(n: int, seed: int) -> list[ClipPlan]:
    """Emotion, intensity and split of each of `n` clips.

    The regular clips split about 9:1 by clip; from 40 clips on, the test set
    holds every emotion (levels 1-3 spread over them) and the training set
    every (emotion, level) pair, and a few extra clips at the held-out levels
    1.5 and 2.5 go to the test split marked `held_out`.
    """
    if n < 1:
        raise ValueError("need at least one clip")
    rng = np.random.default_rng(seed)
    combos = [("neutral", 1.0)] + [(e, lv) for e in EMOTIONS[1:] for lv in LEVELS]
    n_held = max(2, n // 25) if n >= 40 else (1 if n >= 4 else 0)
    n_regular = n - n_held
    n_test = max(round(n_regular / 10), len(EMOTIONS) if n >= 40 else 1)
    n_train = n_regular - n_test

    rows: list[tuple[str, float, str, bool]] = []
    order = list(rng.permutation(len(combos)))
    while len(rows) < n_train:
        rows += [(*combos[i], "train", False) for i in order[: n_train - len(rows)]]
        order = list(rng.permutation(len(combos)))
    if n >= 40:
        levels = list(rng.permutation(np.tile(LEVELS, 3)))
        test = [("neutral", 1.0)] + [(e, float(levels[i])) for i, e in enumerate(EMOTIONS[1:])]
        extra = [combos[i] for i in rng.permutation(len(combos))]
        test += extra[: n_test - len(test)]
    else:
        test = [combos[i] for i in rng.permutation(len(combos))[:n_test]]
    rows += [(e, lv, "test", False) for e, lv in test]
    emotional = list(EMOTIONS[1:])
    for k in range(n_held):
        rows.append((emotional[int(rng.integers(len(emotional)))], HELD_OUT_LEVELS[k % 2], "test", True))
    return [ClipPlan(f"{i:03d}_{e}_{str(lv).replace('.', 'p')}", e, float(lv), s, h, i) for i, (e, lv, s, h) in enumerate(rows)]


# ---------------------------------------------------------------------------
# Animation (pure numpy; no rig, no Blender)
# ---------------------------------------------------------------------------


def speak(text: str, voice_name: str, target: float, rng: np.random.Generator) -> tuple[Speech, Voice]:
    """Speak `text` at a rate that makes it last about `target` seconds, with a random pitch."""
    voice = Voice(voice_name, rate=165, pitch=int(rng.integers(35, 70)), range=int(rng.integers(30, 80)))
    first = Espeak.synthesize(text, voice)
    rate = int(np.clip(165 * first.duration / max(target, 0.3), 110, 260))
    voice = replace(voice, rate=rate)
    return Espeak.synthesize(text, voice), voice


def pad_speech(speech: Speech, before: float, total: float) -> Speech:
    """Put `before` seconds of silence in front and pad (or cut) to `total` seconds."""
    sr = speech.sample_rate
    n_before, n_total = int(round(before * sr)), int(round(total * sr))
    samples = np.zeros(n_total, np.float32)
    body = speech.samples[: max(n_total - n_before, 0)]
    samples[n_before : n_before + len(body)] = body
    # The lead-in is silence too: a pause phoneme at 0 keeps the mouth at rest until speech begins.
    phonemes = [Phoneme("_", 0.0)] + [Phoneme(p.name, p.start + before) for p in speech.phonemes if p.start + before < total]
    return Speech(samples, sr, phonemes)


def smooth_noise(rng: np.random.Generator, T: int, dims: int, fps: float, period: float, scale: float) -> np.ndarray:
    """Smooth random motion [T, dims]: white noise low-passed to about `period` seconds, std ~ `scale`."""
    pad = int(period * fps * 2) + 1
    x = rng.normal(0, 1, (T + 2 * pad, dims))
    sigma = max(period * fps / 2.5, 0.5)
    k = np.exp(-0.5 * (np.arange(-pad, pad + 1) / sigma) ** 2)
    k /= np.sqrt((k**2).sum())
    y = np.stack([np.convolve(x[:, d], k, mode="same") for d in range(dims)], 1)[pad : pad + T]
    return (y * scale).astype(np.float32)


def blinks(rng: np.random.Generator, T: int, fps: float, rate_per_min: float = 17.0) -> np.ndarray:
    """The blink channel [T] in 0..1: blinks at a natural rate (~17 a minute, gamma-distributed gaps),
    each closing in ~70 ms, shut for ~50 ms (at least one frame at 25 fps) and reopening in ~160 ms."""
    t = np.arange(T) / fps
    out = np.zeros(T, np.float32)
    mean_gap = 60.0 / rate_per_min
    when = rng.uniform(0.2, mean_gap)
    while when < t[-1] + 0.3 if T else False:
        close, shut, reopen = rng.uniform(0.05, 0.09), max(rng.uniform(0.04, 0.06), 1.0 / fps), rng.uniform(0.12, 0.2)
        d = t - when
        shape = np.where(d < 0, np.clip(1 + d / close, 0, 1), np.where(d <= shut, 1.0, np.clip(1 - (d - shut) / reopen, 0, 1)))
        out = np.maximum(out, shape.astype(np.float32))
        when += rng.gamma(4.0, mean_gap / 4.0) + 0.3
    return out


def gaze(rng: np.random.Generator, T: int, fps: float, spread: float = 0.06) -> np.ndarray:
    """Both eyes' rotations [T, 6] (axis-angle, left then right): fixations with quick saccades."""
    out = np.zeros((T, 2), np.float32)
    target = rng.normal(0, spread, 2)
    cur = target.copy()
    next_jump = rng.uniform(0.3, 1.2)
    for f in range(T):
        if f / fps >= next_jump:
            target = rng.normal(0, spread, 2)
            next_jump += rng.uniform(0.4, 1.5)
        cur += 0.6 * (target - cur)  # a saccade settles within ~3 frames
        out[f] = cur
    pitch, yaw = out[:, 0], out[:, 1]
    one = np.stack([pitch, yaw, np.zeros_like(yaw)], 1)
    return np.concatenate([one, one], 1)


@dataclass
class ClipAnimation:
    """One clip's parameters at every frame, plus what was spoken."""

    tracking: Tracking
    audio: np.ndarray  # [N] float32 at AUDIO_RATE
    meta: dict


def framed_vertices(model) -> np.ndarray:
    """The rest-pose vertices the camera frames: the head without its neck (when the rig marks one)."""
    keep = np.ones(model.n_verts, bool)
    if "neck" in model.regions:
        keep[model.regions["neck"]] = False
    return model.v_template[keep]


def base_camera(model_verts: np.ndarray, resolution: int, distance: float) -> tuple[np.ndarray, np.ndarray]:
    """K [3,3] and world-to-camera viewmat [4,4] (OpenCV axes) looking at the head from +Z.

    model_verts [V,3]: the vertices to frame; their larger extent fills ~80 % of the frame.
    """
    lo, hi = model_verts.min(0), model_verts.max(0)
    centre = 0.5 * (lo + hi)
    extent = float(max(hi[0] - lo[0], hi[1] - lo[1]))
    f = 0.8 * resolution * (distance - 0.5 * (hi[2] - lo[2])) / extent
    K = np.array([[f, 0, resolution / 2], [0, f, resolution / 2], [0, 0, 1]], np.float32)
    R = np.diag([1.0, -1.0, -1.0])  # camera x right, y down, z forward (towards -Z in FLAME space)
    C = centre + np.array([0.0, 0.0, distance])
    view = np.eye(4, dtype=np.float32)
    view[:3, :3] = R
    view[:3, 3] = -R @ C
    return K, view


def jitter_views(view: np.ndarray, rng: np.random.Generator, T: int, fps: float) -> np.ndarray:
    """viewmat [T,4,4]: the base view with the slight per-frame wobble left by face cropping
    (about 1 mm of shift and 0.3 degrees of roll, partly frame-to-frame, partly slow)."""
    shift = smooth_noise(rng, T, 2, fps, 0.5, 0.0008) + rng.normal(0, 0.0004, (T, 2)).astype(np.float32)
    roll = smooth_noise(rng, T, 1, fps, 0.8, 0.004)[:, 0] + rng.normal(0, 0.0015, T).astype(np.float32)
    out = np.repeat(view[None], T, 0).astype(np.float32)
    c, s = np.cos(roll), np.sin(roll)
    Rz = np.zeros((T, 3, 3), np.float32)
    Rz[:, 0, 0], Rz[:, 0, 1], Rz[:, 1, 0], Rz[:, 1, 1], Rz[:, 2, 2] = c, -s, s, c, 1
    out[:, :3, :3] = Rz @ out[:, :3, :3]
    out[:, :3, 3] = np.einsum("tij,tj->ti", Rz, out[:, :3, 3])
    out[:, :2, 3] += shift
    return out


def animate_clip(plan: ClipPlan, expr_names: list[str], n_expr: int, K: np.ndarray, view: np.ndarray,
                 cfg: SampleConfig) -> ClipAnimation:
    """Speech and every per-frame parameter of one clip (deterministic in cfg.seed and the clip index)."""
    rng = np.random.default_rng([cfg.seed, plan.index])
    pool = SHORT_SENTENCES if cfg.short else SENTENCES
    text = pool[int(rng.integers(len(pool)))]
    voice_name = VOICES[int(rng.integers(len(VOICES)))]
    speech, voice = speak(text, voice_name, cfg.duration - 2 * cfg.pause, rng)
    T = int(round(cfg.duration * cfg.fps))
    total = T / cfg.fps
    speech = pad_speech(speech, cfg.pause, total)
    fps = cfg.fps

    loud = speech_envelope(speech.samples, speech.sample_rate, T, fps, 0.06)
    mouth = mouth_track(speech.phonemes, total, T, fps, loudness=loud, config=MouthConfig())
    emo = emotion_offsets(plan.emotion, plan.intensity, expr_names)

    expr = np.zeros((T, n_expr), np.float32)
    expr[:, : len(emo.expr)] += emo.expr[None]
    for name, values in mouth.expr.items():
        if name in expr_names:
            expr[:, expr_names.index(name)] += values
    # Speech comes with small brow and cheek movements.
    for name, scale in (("brow_inner_raise", 0.08), ("brow_outer_raise", 0.06), ("cheek_raise", 0.04), ("lips_tighten", 0.04)):
        if name in expr_names:
            expr[:, expr_names.index(name)] += smooth_noise(rng, T, 1, fps, 0.6, scale)[:, 0]
    jaw = np.zeros((T, 3), np.float32)
    jaw[:, 0] = mouth.jaw_open * emo.jaw_scale
    shut_lips(expr, jaw[:, 0], mouth.closures, expr_names)
    neck = emo.neck[None] + smooth_noise(rng, T, 3, fps, 1.2, 0.02) * np.array([1.0, 1.0, 0.5], np.float32)
    blink = blinks(rng, T, fps)
    eyes = gaze(rng, T, fps, spread=0.09 if plan.emotion == "fear" else 0.06)
    tracking = Tracking(
        expr=expr, jaw=jaw, neck=neck.astype(np.float32), eyes=eyes, eyelids=np.stack([blink, blink], 1),
        blink=blink, K=np.repeat(K[None], T, 0), viewmat=jitter_views(view, rng, T, fps),
    )
    meta = {
        "text": text, "voice": asdict(voice), "emotion": plan.emotion, "intensity": plan.intensity,
        "held_out": plan.held_out, "skin": asdict(emo.skin),
        "phonemes": [[p.name, round(p.start, 4)] for p in speech.phonemes],
        "closures": [[f, round(t, 4)] for f, t in mouth.closures],
    }
    return ClipAnimation(tracking, resample_audio(speech.samples, speech.sample_rate, AUDIO_RATE), meta)


def resample_audio(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """samples [N] at `rate` -> [M] at `target` (polyphase)."""
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(rate, target)
    return resample_poly(samples, target // g, rate // g).astype(np.float32)


# ---------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------


def default_head():
    """The procedural default head (from `emotalker.core.head`)."""
    from emotalker.core import head

    return head.make_head()


def make_sample(out: str | os.PathLike, cfg: SampleConfig, model=None, progress: str = "bar", log=print) -> Path:
    """Write a sample dataset to `out` (resuming a run with the same settings). Returns the folder.

    model: the FlameModel to animate (default: the procedural head).
    """
    import torch

    from emotalker.core.rig.flame import FlameParams, FlameRig
    from emotalker.core.base.progress import Progress

    from emotalker.sample.blender_render import HeadRenderer, RenderSettings
    from emotalker.sample.masks import skin_masks

    cfg.check(out)
    out = make_output_folder(out)
    settings = asdict(cfg)
    cfg_path = out / CONFIG_FILE
    if cfg_path.exists():
        old = read_json(cfg_path, "make-sample settings")
        if old != settings:
            raise InputError(out, f"holds a sample dataset made with other settings ({cfg_path.name}); use another folder")
    elif any(out.iterdir()):
        raise InputError(out, "folder is not empty and holds no make-sample run to resume")
    write_json(cfg_path, settings)

    model = model if model is not None else default_head()
    if model.albedo is None:
        model.albedo = np.full((model.n_verts, 3), 0.7, np.float32)
    flame_path = out / "flame_model.npz"
    if not flame_path.exists():
        model.save(flame_path)
    plans = plan_clips(cfg.clips, cfg.seed)
    todo = [p for p in plans if not (out / "clips" / p.id / "tracking.npz").exists()]
    if len(todo) < len(plans):
        log(f"resuming: {len(plans) - len(todo)} of {len(plans)} clips already made")

    rest = model.v_template
    joints = model.J_regressor @ rest
    K, view = base_camera(framed_vertices(model), cfg.resolution, cfg.distance)
    rig = FlameRig(model)
    renderer = None
    T = int(round(cfg.duration * cfg.fps))
    with Progress("make-sample", total=len(plans) * T, mode=progress, initial=(len(plans) - len(todo)) * T) as bar:
        for plan in todo:
            anim = animate_clip(plan, model.expr_names, model.n_expr, K, view, cfg)
            tr = anim.tracking
            with torch.no_grad():
                verts, _ = rig(FlameParams(expr=torch.from_numpy(tr.expr), jaw=torch.from_numpy(tr.jaw),
                                           neck=torch.from_numpy(tr.neck), eyes=torch.from_numpy(tr.eyes),
                                           eyelids=torch.from_numpy(tr.eyelids)))
            verts = verts.numpy()
            if renderer is None:
                masks = skin_masks(rest, model.faces, joints[3], joints[4])
                renderer = HeadRenderer(rest, model.faces, model.albedo, masks,
                                        RenderSettings(cfg.resolution, cfg.resolution, cfg.samples))
            renderer.set_skin(Skin(**anim.meta["skin"]))
            tmp = out / "clips" / f".{plan.id}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / "images").mkdir(parents=True)
            for t in range(len(tr)):
                renderer.set_camera(tr.K[t], tr.viewmat[t])
                renderer.render(verts[t], tmp / "images" / FRAME_NAME.format(t))
                bar.update(1)
            import soundfile

            soundfile.write(str(tmp / "audio.wav"), anim.audio, AUDIO_RATE, subtype="PCM_16")
            write_json(tmp / "meta.json", anim.meta)
            tr.save(tmp / "tracking.npz")
            final = out / "clips" / plan.id
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
    write_dataset_json(out, cfg.fps, cfg.resolution, cfg.resolution, [p.info() for p in plans],
                       source={"generator": "emotalker make-sample", **settings})
    return out
