"""A tiny on-disk dataset for Stage 1 tests: frames of a 'teacher' Gaussian avatar on the
tiny rig, rendered with the project's renderer and written in the dataset format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import torch
from PIL import Image

from emotalker.core.models.blendshapes import BlendshapeConfig, GaussianBlendshapes
from emotalker.core.datasets.dataset import FRAME_NAME, ClipInfo, Tracking, write_dataset_json
from emotalker.core.datasets.frames import frame_params
from emotalker.core.models.avatar import render_avatar
from emotalker.core.render.camera import Camera
from stage1_rig import tiny_rig


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World-to-camera [4,4], OpenCV axes (x right, y down, z forward), world +Y up."""
    f = target - eye
    f = f / np.linalg.norm(f)
    r = np.cross(f, np.array([0.0, -1.0, 0.0]))
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    V = np.eye(4)
    V[:3, :3] = np.stack([r, d, f])
    V[:3, 3] = -V[:3, :3] @ eye
    return V


def teacher_model(rig, seed: int = 1) -> GaussianBlendshapes:
    """A textured, opaque avatar whose mouth shading changes with expression 0."""
    t = GaussianBlendshapes.initialize(rig, BlendshapeConfig(n_gaussians=1500, n_teeth=40, seed=seed))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        colour = 0.5 + 0.35 * torch.sin(t.means @ torch.randn(3, 3, generator=g) * 40)
        t.sh_dc[:, 0] = (colour - 0.5) / 0.28209479177387814
        t.opacity_logits.fill_(4.0)
        t.log_scales += 0.4
        t.d_sh[:, 0, :, 0] = -0.5 * t.masks[:, :1]
    return t


def write_teacher_dataset(root: Path, size: int = 64, frames: int = 8, splits=("train", "train", "test"), seed: int = 0) -> Path:
    rig = tiny_rig(subdivisions=3)
    teacher = teacher_model(rig)
    rng = np.random.default_rng(seed)
    root = Path(root)
    rig.save(root / "flame_model.npz")
    clips = []
    for c, split in enumerate(splits):
        cid = f"clip{c:02d}"
        d = root / "clips" / cid
        (d / "images").mkdir(parents=True)
        T = frames
        f = size * 1.6
        tr = Tracking(expr=(rng.normal(size=(T, rig.n_expr)) * 0.8).astype(np.float32),
                      jaw=(rng.normal(size=(T, 3)) * [0.08, 0.01, 0.01]).astype(np.float32),
                      neck=(rng.normal(size=(T, 3)) * 0.05).astype(np.float32), eyes=np.zeros((T, 6), np.float32),
                      eyelids=rng.random((T, 2)).astype(np.float32), blink=np.zeros(T, np.float32),
                      K=np.broadcast_to(np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], np.float32), (T, 3, 3)).copy(),
                      viewmat=np.stack([look_at(np.array([0.04 * np.sin(t + c), 0.01, 0.42]), np.zeros(3)) for t in range(T)]).astype(np.float32))
        tr.save(d / "tracking.npz")
        soundfile.write(d / "audio.wav", np.zeros(int(16000 * T / 25), np.float32), 16000)
        with torch.no_grad():
            for t in range(T):
                g = teacher(frame_params(tr, t))[0]
                out = render_avatar(g, Camera(tr.viewmat[t], tr.K[t], size, size))
                rgba = torch.cat([out.rgb[0], out.alpha[0]], -1).clamp(0, 1).numpy()
                Image.fromarray((rgba * 255 + 0.5).astype(np.uint8)).save(d / "images" / FRAME_NAME.format(t))
        clips.append(ClipInfo(cid, "neutral", 1.0, split))
    write_dataset_json(root, 25.0, size, size, clips)
    return root
