"""A tiny avatar bundle and a speech-like clip, built in the test for the bake tests.

The avatar is Stage 1 initialised through its own API on the icosphere test rig
(a few hundred Gaussians) plus an A2E model built through its API (untrained:
the bake tests check the machinery, not the motion's quality), so it is made in
well under a second and is deterministic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from stage1_rig import tiny_rig

FPS = 25
SR = 16000


def make_tiny_avatar(root: Path, n_gaussians: int = 150, a2e: bool = True, seed: int = 0, emotion: bool = False) -> Path:
    """Write a bundle with flame_model.npz, neutral.safetensors and (optionally) a2e.safetensors and
    emotion.safetensors (Stage 2 built through its API, its zero-initialised heads randomised so
    that its offsets are not zero)."""
    import torch

    from emotalker.core.models.a2e import A2EConfig, A2EModel
    from emotalker.core.models.blendshapes import BlendshapeConfig, GaussianBlendshapes
    from emotalker.core.models.bundle import AvatarBundle

    bundle = AvatarBundle.create(root)
    rig = tiny_rig(subdivisions=2, n_expr=6, seed=seed)
    rig.save(bundle.flame_path)
    model = GaussianBlendshapes.initialize(rig, BlendshapeConfig(n_gaussians=n_gaussians, n_blendshapes=6, n_teeth=10,
                                                                 sh_degree=1, seed=seed))
    with torch.no_grad():  # make the expression deltas non-zero so frames differ
        g = torch.Generator().manual_seed(seed)
        model.d_log_scales.copy_(0.1 * torch.randn(model.d_log_scales.shape, generator=g))
        model.opacity_logits.fill_(2.0)
    model.save(bundle.stage_path("neutral"))
    bundle.update_manifest("neutral", file=bundle.stage_path("neutral").name)
    if a2e:
        torch.manual_seed(seed)
        net = A2EModel(A2EConfig(n_expr=6, d_model=16, n_heads=2, n_layers=1, ffn=32, past=4, future=1))
        with torch.no_grad():
            net.out_std.fill_(0.5)
            net.head.weight.normal_(0, 0.3)
        net.eval().save(bundle.stage_path("a2e"), {"fps": FPS})
        bundle.update_manifest("a2e", file=bundle.stage_path("a2e").name, fps=FPS)
    if emotion:
        from emotalker.core.audio.features import AudioFeaturizer, FeatureConfig
        from emotalker.core.models.emotion_deformer import EmotionConfig, EmotionDeformer

        features = FeatureConfig()
        torch.manual_seed(seed + 1)
        deformer = EmotionDeformer(EmotionConfig(n_gaussians=model.n_gaussians,
                                                 audio_dim=features.window * AudioFeaturizer(features).dim,
                                                 features=features, d_model=8, ffn=8, audio_hidden=16))
        with torch.no_grad():
            for name, p in deformer.named_parameters():
                if "head" in name and p.abs().max() == 0:
                    p.normal_(0, 0.2)
        deformer.eval().save(bundle.stage_path("emotion"))
        bundle.update_manifest("emotion", file=bundle.stage_path("emotion").name)
    bundle.update_manifest(None, fps=FPS)
    return root


def make_speech(path: Path, seconds: float = 1.2, seed: int = 0, rate: int = SR) -> Path:
    """A syllable-like buzz (loudness bumps with pauses) as a 16-bit wav."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    env = np.clip(np.sin(2 * np.pi * 3.0 * t + rng.uniform(0, 6)), 0, None)
    buzz = sum(np.sin(2 * np.pi * 180 * k * t) / k for k in range(1, 6))
    sf.write(str(path), (0.3 * env * buzz + 0.002 * rng.standard_normal(n)).astype(np.float32), rate, subtype="PCM_16")
    return path


def core_blender_pixels(avatar_dir: Path, curves_file: Path, audio: Path, frame: int, viewmat, K, width: int,
                        height: int, model: str = "pinhole") -> np.ndarray:
    """The core's own render of a baked frame from a camera (`model` "pinhole" or "ortho"), independent of the
    worker and the add-on: scene-linear premultiplied RGBA [height, width, 4], top row first (what Blender
    shows, before its view transform)."""
    import torch

    from emotalker.bake.engine import FlameCurves, FrameProducer
    from emotalker.bake.video import blender_rgba
    from emotalker.core.audio.features import AudioWindows
    from emotalker.core.audio.waveform import load_audio
    from emotalker.core.models.avatar import Avatar, render_avatar
    from emotalker.core.models.bundle import AvatarBundle
    from emotalker.core.models.emotion_deformer import camera_code
    from emotalker.core.render.camera import Camera

    av = Avatar.open(AvatarBundle.open(avatar_dir))
    curves = FlameCurves.load(curves_file, av.stage1.flame_model.n_expr)
    rows = curves.rows(np.array([frame]))
    frame_curves = FlameCurves(*(getattr(curves, k)[rows] for k in ("expr", "jaw", "neck", "eyes", "eyelids",
                                                                      "emotion_weights", "intensity")),
                               fps=curves.fps, frame_start=frame)
    windows = AudioWindows(load_audio(audio), av.audio_features, curves.fps)
    g = FrameProducer(av, frame_curves, curves.emotion_weights[rows], curves.intensity[rows], curves.eyelids[rows, 0],
                      chunk=1, audio=lambda frames: windows(frames - 1, hold_ends=True),
                      camera=camera_code(np.asarray(viewmat), model))(frame)
    with torch.inference_mode():
        out = render_avatar(g, Camera(np.asarray(viewmat), np.asarray(K), width, height, model))
    return blender_rgba(out.rgb[0], out.alpha[0])[::-1]  # the conversion is tested against its formula in test_video

