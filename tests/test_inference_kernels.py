"""The bake's compiled inference path (torch.inference_mode on the CPU) against the differentiable
torch code it must reproduce: Stage 1 alone, Stage 1 + Stage 2 as the bake evaluator runs them,
the rig's skinning and the mesh cue; Avatar.evaluate against Avatar.evaluate_differentiable."""

from __future__ import annotations

import pytest
import torch

from stage1_rig import tiny_rig

from emotalker.core.models.avatar import Avatar, FrameConditions
from emotalker.core.models.blendshapes import DELTA_NAMES, BlendshapeConfig, GaussianBlendshapes
from emotalker.core.base.emotions import one_hot
from emotalker.core.models.emotion_deformer import (EmotionConfig, EmotionDeformer, EmotionInputs, apply_offsets,
                                    apply_offsets_in_place, mesh_cue)
from emotalker.core.rig.flame import FlameParams

FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh")
AUDIO = 24


@pytest.fixture(scope="module")
def rig():
    return tiny_rig(n_expr=8)


def stage1_model(rig, sh_degree: int = 1, sh_delta_degree: int = 0) -> GaussianBlendshapes:
    """A small Stage 1 model with random non-zero deltas and SH, frozen as the bake loads it."""
    cfg = BlendshapeConfig(n_gaussians=150, n_blendshapes=8, n_teeth=12, sh_degree=sh_degree,
                           sh_delta_degree=sh_delta_degree)
    model = GaussianBlendshapes.initialize(rig, cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name in DELTA_NAMES + ("sh_rest", "teeth_sh_rest"):
            getattr(model, name).normal_(0, 0.02, generator=g)
        model.quats.add_(torch.randn(model.quats.shape, generator=g) * 0.2)
        model.means.add_(torch.randn(model.means.shape, generator=g) * 2e-3)  # off the surface
    return model.eval().requires_grad_(False)


def frame_params(B: int = 3, seed: int = 0) -> FlameParams:
    """Every pose the bake's curves carry (expression, jaw, neck, eyes, eyelids), plus global pose and translation."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return FlameParams(expr=r(B, 8), jaw=0.3 * r(B, 3), neck=0.2 * r(B, 3), eyes=0.2 * r(B, 6),
                       eyelids=torch.rand(B, 2, generator=g), global_pose=0.2 * r(B, 3), transl=0.02 * r(B, 3))


def assert_close(fast, ref):
    for name in FIELDS:
        a, b = getattr(fast, name), getattr(ref, name)
        assert a.shape == b.shape, name
        assert torch.allclose(a, b, atol=2e-6, rtol=1e-5), (name, float((a - b).abs().max()))


@pytest.mark.parametrize("sh_degree,sh_delta_degree", [(1, 0), (1, 1), (0, 0), (2, 1)])
def test_stage1_inference_path_matches_the_differentiable_path(rig, sh_degree, sh_delta_degree):
    model = stage1_model(rig, sh_degree, sh_delta_degree)
    p = frame_params()
    ref = model.evaluate(p)  # autograd on: the reference torch code
    with torch.inference_mode():
        fast = model.evaluate(p)
        assert model._blend_cache is not None  # the compiled path really ran
        fast_deg0 = model.evaluate(p, sh_degree=0)
    assert_close(fast, ref)
    assert_close(fast_deg0, model.evaluate(p, sh_degree=0))
    # The frames really differ from the rest pose and from each other: nothing trivially equal.
    assert (fast.means[0] - fast.means[1]).abs().max() > 1e-3
    assert (fast.quats[0] - fast.quats[1]).abs().max() > 1e-3


def test_cache_follows_parameter_changes(rig):
    model = stage1_model(rig)
    p = frame_params(2)
    with torch.inference_mode():
        model.evaluate(p)
    with torch.no_grad():
        model.d_means.mul_(3.0)
        model.log_scales.add_(0.1)
    with torch.inference_mode():
        fast = model.evaluate(p)
    assert_close(fast, model.evaluate(p))


def test_skinning_and_mesh_cue_match_the_differentiable_path(rig):
    model = stage1_model(rig)
    p = frame_params()
    verts, A = model.rig()(p)
    cue = mesh_cue(model, p)
    with torch.inference_mode():
        fast_verts, fast_A = model.rig()(p)
        fast_cue = mesh_cue(model, p)
    assert torch.allclose(fast_verts, verts, atol=1e-6) and torch.equal(fast_A, A)
    assert torch.allclose(fast_cue, cue, atol=1e-7)
    assert cue.abs().max() > 1e-3


def trained_deformer(model: GaussianBlendshapes) -> EmotionDeformer:
    """A Stage 2 network for `model` whose heads and null codes are non-zero, frozen."""
    torch.manual_seed(1)
    deformer = EmotionDeformer(EmotionConfig(n_gaussians=model.n_gaussians, audio_dim=AUDIO))
    with torch.no_grad():
        for name, value in deformer.named_parameters():
            if "head" in name or name == "null":
                value.normal_(0, 0.2)
    return deformer.eval().requires_grad_(False)


def four_frames(camera: torch.Tensor) -> FrameConditions:
    """Four frames of mixed emotions; frame 1 at intensity 0 keeps Stage 1."""
    B = 4
    emotion = torch.from_numpy(one_hot(["happy", "sad", "angry", "happy"]))
    intensity = torch.tensor([2.0, 0.0, 3.0, 0.7])
    blink = torch.tensor([0.0, 0.3, 1.0, 0.5])
    audio = torch.randn(B, AUDIO, generator=torch.Generator().manual_seed(2))
    return FrameConditions(frame_params(B, seed=5), emotion, intensity, blink, audio, camera)


def test_stage1_and_stage2_as_the_bake_runs_them_match_the_differentiable_path(rig):
    model = stage1_model(rig)
    deformer = trained_deformer(model)
    B = 4
    camera = torch.tensor([0.1, 0.0, 0.99])
    conditions = four_frames(camera)
    p, emotion, intensity, blink, audio = (conditions.params, conditions.emotion, conditions.intensity,
                                           conditions.blink, conditions.audio)

    frames = Avatar(model, deformer).evaluate(conditions).unbind()  # inference mode: the compiled path

    stage1 = model.evaluate(p).unbind()  # the differentiable code, autograd on
    dM = mesh_cue(model, p)
    for b in range(B):
        ref = stage1[b]
        if intensity[b] > 0:
            cond = EmotionInputs(emotion[b], float(intensity[b]), float(blink[b]), audio[b], camera)
            offsets = deformer.offsets(dM[b], cond)
            assert offsets.abs().max() > 1e-2
            ref = apply_offsets(ref, offsets)
        assert_close(frames[b], ref)


@pytest.mark.parametrize("per_frame_camera", [False, True])
def test_avatar_inference_and_differentiable_paths_agree(rig, per_frame_camera):
    model = stage1_model(rig)
    avatar = Avatar(model, trained_deformer(model))
    camera = torch.tensor([0.1, 0.0, 0.99])
    if per_frame_camera:
        camera = torch.nn.functional.normalize(camera + torch.randn(4, 3, generator=torch.Generator().manual_seed(7)) * 0.2, dim=-1)
    conditions = four_frames(camera)
    fast = avatar.evaluate(conditions)
    slow = avatar.evaluate_differentiable(conditions)
    assert torch.is_inference(fast.means) and not torch.is_inference(slow.means)
    stage1 = Avatar(model).evaluate(conditions).unbind()
    for b, (f, s) in enumerate(zip(fast.unbind(), slow.unbind())):
        assert_close(f, s)
        changed = (f.sh - stage1[b].sh).abs().max()
        assert (changed == 0) if b == 1 else (changed > 1e-3)  # intensity 0 keeps Stage 1; the others move
    if per_frame_camera:  # each frame reads its own camera code
        shared = Avatar(model, avatar.stage2).evaluate(four_frames(camera[0])).unbind()
        assert (shared[2].sh - fast.unbind()[2].sh).abs().max() > 1e-6


def test_avatar_differentiable_path_trains_stage2_only(rig):
    model = stage1_model(rig)
    deformer = trained_deformer(model).requires_grad_(True)
    batch = Avatar(model, deformer).evaluate_differentiable(four_frames(torch.tensor([0.0, 0.0, 1.0])))
    batch.sh.sum().backward()
    assert deformer.head[2].weight.grad.abs().max() > 0
    assert all(p.grad is None for p in model.parameters())


def test_offsets_in_place_match_apply_offsets_with_and_without_the_kernel(rig):
    model = stage1_model(rig)
    p = frame_params(2)
    g = torch.Generator().manual_seed(4)
    offsets = torch.randn(model.n_gaussians, 11, generator=g) * 0.1
    expected = apply_offsets(model.evaluate(p).unbind()[1], offsets)
    for mode in (torch.inference_mode, torch.no_grad):  # the compiled pass, then the torch fallback
        with mode():
            batch = model.evaluate(p)
            apply_offsets_in_place(batch, 1, offsets)
        assert_close(batch.unbind()[1], expected)
        assert_close(batch.unbind()[0], model.evaluate(p).unbind()[0])  # the other frame is untouched


def test_kernels_leave_torch_thread_count_alone(rig):
    model = stage1_model(rig)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.inference_mode():
            model.evaluate(frame_params(2))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
