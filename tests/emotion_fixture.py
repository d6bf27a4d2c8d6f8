"""A tiny emotional dataset and avatar for the Stage 2 tests, built in the test.

A "teacher" Stage 1 model on the sphere rig of `stage1_rig` renders the ground
truth, with an emotion-driven colour change Stage 1 cannot express: happy
reddens the front of the head and sad darkens it, both in proportion to the
intensity. The student avatar's Stage 1 is the teacher itself (a perfect
neutral fit), so only Stage 2 can close the remaining gap.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image

from a2e_fixture import SR, audio_for, envelope
from stage1_rig import tiny_rig

from emotalker.core.models.blendshapes import BlendshapeConfig, GaussianBlendshapes
from emotalker.core.models.bundle import AvatarBundle
from emotalker.core.datasets.frames import frame_params
from emotalker.core.datasets.dataset import Tracking

FPS, SIZE, T = 25, 32, 8
SHIFT = {"neutral": (0.0, 0.0, 0.0), "happy": (0.5, -0.2, -0.2), "sad": (-0.4, -0.4, -0.3)}
CLIPS = [("neutral_a", "neutral", 1.0, "train", False), ("happy_a", "happy", 1.0, "train", False),
         ("happy_b", "happy", 3.0, "train", False), ("sad_a", "sad", 3.0, "train", False),
         ("sad_b", "sad", 2.0, "train", False), ("happy_t", "happy", 3.0, "test", False),
         ("happy_h", "happy", 1.5, "test", True)]


def camera() -> tuple[np.ndarray, np.ndarray]:
    """K [3,3], viewmat [4,4]: looking at the sphere's front (+Z) from 0.4 m."""
    K = np.array([[40.0, 0, SIZE / 2], [0, 40.0, SIZE / 2], [0, 0, 1]], np.float32)
    view = np.diag([1.0, -1.0, -1.0, 1.0]).astype(np.float32)
    view[2, 3] = 0.4
    return K, view


def teacher(rig, n: int = 300) -> GaussianBlendshapes:
    model = GaussianBlendshapes.initialize(rig, BlendshapeConfig(n_gaussians=n, n_blendshapes=8, n_teeth=10, seed=0))
    with torch.no_grad():
        model.opacity_logits.fill_(2.0)
        model.log_scales.add_(0.3)
        # A two-tone head, so that colour changes are visible against the white background.
        model.sh_dc[:, 0, 0] = torch.where(model.means[:, 1] > 0, 0.3, -0.3)
    return model


def render_truth(model, tr: Tracking, t: int, shift: np.ndarray) -> np.ndarray:
    from emotalker.core.models.avatar import render_avatar
    from emotalker.core.render.camera import Camera
    from emotalker.core.render.gaussians import Gaussians

    with torch.no_grad():
        g = model(frame_params(tr, t))[0]
        front = (g.means[: model.n_gaussians, 2] > 0.03).float()[:, None]
        sh = g.sh.clone()
        sh[: model.n_gaussians, 0] += front * torch.as_tensor(shift, dtype=torch.float32) / 0.2821
        shifted = Gaussians(g.means, g.quats, g.log_scales, g.opacity_logits, sh)
        out = render_avatar(shifted, Camera(tr.viewmat[t], tr.K[t], SIZE, SIZE), backend="cpu")
    rgb, alpha = out.rgb[0].clamp(0, 1).numpy(), out.alpha[0].clamp(0, 1).numpy()
    # Straight (not premultiplied) colour with the alpha as the mask.
    colour = np.where(alpha > 1e-3, rgb / np.maximum(alpha, 1e-3), 0).clip(0, 1)
    return (np.concatenate([colour, alpha], -1) * 255 + 0.5).astype(np.uint8)


def make_emotion_dataset(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """(dataset folder, avatar folder holding Stage 1)."""
    rng = np.random.default_rng(seed)
    rig = tiny_rig(subdivisions=2, n_expr=8)
    data = root / "dataset"
    data.mkdir(parents=True)
    rig.save(data / "flame_model.npz")
    model = teacher(rig)
    K, view = camera()
    for cid, emotion, intensity, split, held in CLIPS:
        folder = data / "clips" / cid
        (folder / "images").mkdir(parents=True)
        env = envelope(T, rng)
        sf.write(folder / "audio.wav", audio_for(env, rng), SR)
        expr = np.zeros((T, 8), np.float32)
        expr[:, 0] = env
        expr[:, 1] = {"happy": 1.0, "sad": -1.0}.get(emotion, 0.0) * intensity / 3
        jaw = np.zeros((T, 3), np.float32)
        jaw[:, 0] = 0.1 * env
        blink = np.zeros(T, np.float32)
        blink[T // 2] = 1.0
        tr = Tracking(expr=expr, jaw=jaw, neck=np.zeros((T, 3), np.float32), eyes=np.zeros((T, 6), np.float32),
                      eyelids=np.zeros((T, 2), np.float32), blink=blink, K=np.tile(K, (T, 1, 1)),
                      viewmat=np.tile(view, (T, 1, 1)))
        tr.save(folder / "tracking.npz")
        shift = np.array(SHIFT[emotion], np.float32) * intensity / 3
        for t in range(T):
            Image.fromarray(render_truth(model, tr, t, shift), "RGBA").save(folder / "images" / f"{t:06d}.png")
    clips = [{"id": c, "emotion": e, "intensity": s, "split": sp, **({"held_out": True} if h else {})}
             for c, e, s, sp, h in CLIPS]
    (data / "dataset.json").write_text(json.dumps({"format": "emotalker-dataset/1", "fps": FPS, "width": SIZE,
                                                   "height": SIZE, "clips": clips}))
    avatar = root / "avatar"
    bundle = AvatarBundle.create(avatar)
    rig.save(bundle.flame_path)
    model.save(bundle.stage_path("neutral"))
    bundle.update_manifest("neutral", resolution=[SIZE, SIZE], background=[1.0, 1.0, 1.0])
    return data, avatar
