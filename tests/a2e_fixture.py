"""A tiny dataset in the dataset format of docs/architecture.md, built in the test, for the audio and A2E tests.

The audio is a 220 Hz buzz whose loudness follows a syllable envelope; the
tracked jaw opening and first expression component follow the same envelope,
and each emotion adds a fixed expression offset scaled by intensity / 3. So a
working A2E must hear the envelope and read the emotion.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from emotalker.core.rig.flame import FlameModel

FPS = 25
SR = 16000
N_EXPR = 6
EMOTION_OFFSETS = {"neutral": np.zeros(N_EXPR), "happy": np.array([0, 1.0, 0.5, 0, 0, 0]), "sad": np.array([0, -0.6, 0, 0.8, 0, 0])}


def make_rig(V: int = 45, seed: int = 0) -> FlameModel:
    """A small random FLAME-format rig (5 joints) whose last third of vertices are the jaw-skinned lips."""
    rng = np.random.default_rng(seed)
    J = 5
    weights = np.zeros((V, J), np.float32)
    third = V // 3
    weights[:third, 0] = 1.0
    weights[third : 2 * third, 1] = 1.0
    weights[2 * third :, 2] = 1.0
    J_reg = rng.random((J, V)).astype(np.float32)
    J_reg /= J_reg.sum(1, keepdims=True)
    return FlameModel(
        v_template=rng.normal(scale=0.05, size=(V, 3)).astype(np.float32),
        faces=np.stack([np.arange(V - 2), np.arange(1, V - 1), np.arange(2, V)], 1),
        shapedirs=rng.normal(scale=0.005, size=(V, 3, 2 + N_EXPR)).astype(np.float32),
        n_shape=2,
        n_expr=N_EXPR,
        posedirs=rng.normal(scale=0.001, size=(V, 3, 36)).astype(np.float32),
        J_regressor=J_reg,
        weights=weights,
        kintree_table=np.array([[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64),
        eyelids=rng.normal(scale=0.002, size=(2, V, 3)).astype(np.float32),
        regions={"lips": np.arange(2 * third, V)},
        expr_names=[f"e{i}" for i in range(N_EXPR)],
    ).validate()


def envelope(T: int, rng: np.random.Generator) -> np.ndarray:
    """Syllable-like loudness per video frame [T] in [0, 1]: smooth bumps with pauses."""
    env = np.zeros(T)
    t = 0
    while t < T:
        length = int(rng.integers(3, 8))
        if rng.random() < 0.75:
            env[t : t + length] = np.sin(np.linspace(0, np.pi, length + 2)[1:-1])[: T - t] * rng.uniform(0.5, 1.0)
        t += length
    return env


def audio_for(env: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A buzz (220 Hz harmonics plus a little noise) whose loudness follows env, at 16 kHz."""
    n = int(len(env) * SR / FPS)
    time = np.arange(n) / SR
    amp = np.interp(time, np.arange(len(env)) / FPS, env)
    buzz = sum(np.sin(2 * np.pi * 220 * k * time) / k for k in range(1, 6))
    return (0.2 * amp * buzz + 0.003 * rng.standard_normal(n)).astype(np.float32)


def make_dataset(root: Path, clips_per_emotion: int = 3, T: int = 60, seed: int = 0, images: bool = True) -> Path:
    """Write the dataset under `root`; the last clip of each emotion is held out (split "test")."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    make_rig().save(root / "flame_model.npz")
    clips = []
    for emotion, offset in EMOTION_OFFSETS.items():
        for k in range(clips_per_emotion):
            cid = f"{emotion}_{k:02d}"
            intensity = 0.0 if emotion == "neutral" else float(1 + k % 3)
            split = "test" if k == clips_per_emotion - 1 else "train"
            clips.append({"id": cid, "emotion": emotion, "intensity": intensity, "split": split})
            env = envelope(T, rng)
            folder = root / "clips" / cid
            (folder / "images").mkdir(parents=True)
            sf.write(folder / "audio.wav", audio_for(env, rng), SR)
            expr = np.zeros((T, N_EXPR), np.float32)
            expr[:, 0] = env
            expr += offset * intensity / 3
            jaw = np.zeros((T, 3), np.float32)
            jaw[:, 0] = 0.25 * env
            neck = (0.02 * np.sin(np.arange(T)[:, None] / 9 + np.arange(3))).astype(np.float32)
            K = np.array([[10, 0, 4], [0, 10, 4], [0, 0, 1]], np.float32)
            viewmat = np.tile(np.eye(4, dtype=np.float32), (T, 1, 1))
            viewmat[:, 2, 3] = 1.0
            np.savez(folder / "tracking.npz", expr=expr, jaw=jaw, neck=neck, eyes=np.zeros((T, 6), np.float32),
                     eyelids=np.zeros((T, 2), np.float32), blink=np.zeros(T, np.float32), K=K, viewmat=viewmat)
            if images:
                img = Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA")
                for t in range(T):
                    img.save(folder / "images" / f"{t:06d}.png")
    (root / "dataset.json").write_text(json.dumps({"format": "emotalker-dataset/1", "fps": FPS, "width": 8, "height": 8, "clips": clips}))
    return root
