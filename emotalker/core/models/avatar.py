"""The avatar: a bundle's Stage 1 and Stage 2 -> each frame's Gaussians, and rendering them from a camera.

    avatar = Avatar.open(bundle, device, use_emotion=True)   # loads and checks every stage once
    batch = avatar.evaluate(FrameConditions(params, emotion, intensity, blink, audio, camera))
    out = render_avatar(batch.unbind()[0], camera)

Stage 1 (GaussianBlendshapes) poses the neutral Gaussians by the frame's FLAME
parameters; Stage 2 (EmotionDeformer), when the bundle has it and the caller
did not turn it off (`--no-emotion`), adds its offsets to the face Gaussians
from the frame's mesh cue, emotion, intensity, blink, audio window and camera.
Intensity 0 leaves Stage 1 as is (the network is not run).

Two evaluation paths, the same arithmetic:

- `evaluate`: inference (the bake, the worker, the benchmarks), under
  torch.inference_mode. On the CPU Stage 1 is one GEMM and one compiled pass
  (inference_kernels) and Stage 2's offsets are written into the batch in place.
- `evaluate_differentiable`: the plain torch form, the specification of the
  kernels. Gradients reach whatever requires them (Stage 2 training); the
  evaluations run while training (metrics) use it under torch.no_grad so that
  their arithmetic stays bit for bit that of training and no inference tensor
  enters the caches of a model still being trained.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from emotalker.core.base.emotions import check_intensity
from emotalker.core.base.errors import InputError
from emotalker.core.base.threads import single_threaded
from emotalker.core.models.blendshapes import FrameBatch, GaussianBlendshapes
from emotalker.core.models.bundle import AvatarBundle
from emotalker.core.models.emotion_deformer import (EmotionDeformer, EmotionInputs, apply_offsets,
                                                    apply_offsets_in_place, mesh_cue)
from emotalker.core.render import RenderOutput, rasterize
from emotalker.core.render.camera import Camera
from emotalker.core.render.gaussians import Gaussians
from emotalker.core.rig.flame import FlameModel, FlameParams


@dataclass
class FrameConditions:
    """What B frames of an avatar are evaluated from.

    params: FLAME parameters, fields [B, ...]; emotion [B, 8] weights over EMOTIONS
    (normalised by Stage 2); intensity [B] in [0, 3]; blink [B] in [0, 1]; audio
    [B, Da] each frame's audio window (`frame_audio_windows`), needed by Stage 2;
    camera: Stage 2's camera code (`camera_code`), [3] shared by the B frames or
    [B, 3], or None for the training cameras' mean. Stage 1 reads only params.
    """

    params: FlameParams
    emotion: torch.Tensor
    intensity: torch.Tensor
    blink: torch.Tensor
    audio: torch.Tensor | None = None
    camera: torch.Tensor | None = None

    def stage2_inputs(self, b: int) -> EmotionInputs:
        """Frame b's conditioning of the Stage 2 network."""
        camera = self.camera if self.camera is None or self.camera.ndim == 1 else self.camera[b]
        return EmotionInputs(self.emotion[b], float(self.intensity[b]), float(self.blink[b]), self.audio[b], camera)


class Avatar:
    """Stage 1 alone, or Stage 1 + Stage 2: `evaluate(conditions)` -> FrameBatch (face Gaussians first, then teeth).

    Build with `Avatar.open(bundle, ...)`; `Avatar(stage1, stage2)` wraps models in memory (training),
    with the same check that Stage 2 fits Stage 1.
    """

    def __init__(self, stage1: GaussianBlendshapes, stage2: EmotionDeformer | None = None,
                 sh_degree: int | None = None, source: str | os.PathLike | None = None):
        if stage2 is not None and stage2.cfg.n_gaussians != stage1.n_gaussians:
            raise InputError(source, f"Stage 2 was trained for {stage2.cfg.n_gaussians} face Gaussians but this "
                                     f"avatar's Stage 1 has {stage1.n_gaussians}; retrain `emotalker train emotion`")
        self.stage1, self.stage2 = stage1, stage2
        active = stage1.active_sh_degree
        self.sh_degree = active if sh_degree is None else min(sh_degree, active)

    @classmethod
    def open(cls, bundle: AvatarBundle | str | os.PathLike, device: str | torch.device = "cpu",
             use_emotion: bool = True, sh_degree: int | None = None) -> "Avatar":
        """Load Stage 1 (required) and, when the bundle has it and `use_emotion`, Stage 2, frozen on `device`.

        One InputError naming the file at fault: a stage missing or not in its format, a Stage 2
        trained with another emotion list or for another Stage 1 (its Gaussian count).
        `sh_degree` caps Stage 1's active SH degree.
        """
        if not isinstance(bundle, AvatarBundle):
            bundle = AvatarBundle.open(bundle)
        path = bundle.require_stage("neutral")
        stage1 = GaussianBlendshapes.load(path, FlameModel.load(bundle.flame_path), device=device).eval()
        stage1.requires_grad_(False)
        stage2 = None
        if use_emotion and bundle.has_stage("emotion"):
            stage2, _ = EmotionDeformer.load(bundle.stage_path("emotion"), device=device)
            stage2.requires_grad_(False)
        return cls(stage1, stage2, sh_degree, source=bundle.stage_path("emotion"))

    @property
    def n_gaussians(self) -> int:
        """Gaussians a frame: face and teeth."""
        return self.stage1.n_gaussians + self.stage1.n_teeth

    @property
    def uses_emotion(self) -> bool:
        return self.stage2 is not None

    @property
    def audio_features(self):
        """The FeatureConfig of the audio windows Stage 2 reads (None without Stage 2)."""
        return None if self.stage2 is None else self.stage2.cfg.features

    def evaluate(self, conditions: FrameConditions) -> FrameBatch:
        """The inference path: B frames' raw Gaussians [B, N+M, ...], computed under torch.inference_mode
        with torch on one thread, so that the same conditions give the same bits whatever the thread count
        (threads.single_threaded; the compiled kernels keep the run's threads)."""
        with torch.inference_mode(), single_threaded():
            batch = self.stage1.evaluate(conditions.params, self.sh_degree)
            active = self._emotional_frames(conditions)
            if active:
                dM = mesh_cue(self.stage1, conditions.params)  # [B, N, 3]
                for b in active:
                    apply_offsets_in_place(batch, b, self.stage2.offsets(dM[b], conditions.stage2_inputs(b)))
        return batch

    def evaluate_differentiable(self, conditions: FrameConditions) -> FrameBatch:
        """As `evaluate`, in plain torch operations that autograd can follow (training and its evaluations).

        The mesh cue is an input of Stage 2, not trained through.
        """
        batch = self.stage1.evaluate(conditions.params, self.sh_degree)
        active = self._emotional_frames(conditions)
        if not active:
            return batch
        with torch.no_grad():
            dM = mesh_cue(self.stage1, conditions.params)
        frames = batch.unbind()
        for b in active:
            frames[b] = apply_offsets(frames[b], self.stage2.offsets(dM[b], conditions.stage2_inputs(b)))
        return FrameBatch.stack(frames)

    def _emotional_frames(self, conditions: FrameConditions) -> list[int]:
        """The frames Stage 2 changes: all with intensity > 0 when Stage 2 is loaded, else none
        (InputError for an intensity outside [0, 3])."""
        if self.stage2 is None:
            return []
        if conditions.audio is None:
            raise ValueError("Stage 2 needs each frame's audio window in FrameConditions.audio")
        return [b for b, s in enumerate(conditions.intensity.tolist()) if check_intensity(s) > 0.0]


def render_avatar(gaussians: Gaussians, camera: Camera, background: torch.Tensor | None = None,
                  backend: str = "auto") -> RenderOutput:
    """Render one frame's raw Gaussians from `camera` -> RenderOutput (rgb [1,H,W,3], alpha [1,H,W,1], ...).

    background: [3] colour composited behind (None: black, i.e. rgb is premultiplied by alpha).
    Differentiable in the Gaussians; the caller picks the grad / inference mode.
    """
    quats, scales, opacities, sh = gaussians.activated()
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32, device=gaussians.means.device)[None]  # noqa: E731
    return rasterize(gaussians.means, quats, scales, opacities, sh, as_tensor(camera.viewmat), as_tensor(camera.K),
                     camera.width, camera.height, sh_degree=gaussians.sh_degree,
                     backgrounds=None if background is None else background[None], camera_model=camera.model,
                     backend=backend)
