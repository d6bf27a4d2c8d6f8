"""Stage 2 network: exact start at Stage 1, intensity gate, emotion mixes, files, fast path."""

from __future__ import annotations

import sys

import pytest
import torch

from stage1_rig import tiny_rig

from emotalker.core.models.blendshapes import BlendshapeConfig, GaussianBlendshapes
from emotalker.core.base.emotions import EMOTIONS, normalise_mix, one_hot, parse_mix
from emotalker.core.models.avatar import Avatar, FrameConditions
from emotalker.core.models.bundle import AvatarBundle
from emotalker.core.models.emotion_deformer import (EmotionConfig, EmotionDeformer, EmotionInputs, N_OFFSETS, apply_offsets,
                                                    mesh_cue)
from emotalker.core.base.errors import InputError
from emotalker.core.base.fileio import load_tensors, save_tensors
from emotalker.core.rig.flame import FlameParams

AUDIO = 40


def onehot(name: str) -> torch.Tensor:
    return torch.from_numpy(one_hot(name))


@pytest.fixture(scope="module")
def stage1():
    return GaussianBlendshapes.initialize(tiny_rig(n_expr=8), BlendshapeConfig(n_gaussians=200, n_blendshapes=8, n_teeth=8)).eval()


def make_deformer(n: int, trained: bool = True, **kw) -> EmotionDeformer:
    """A Stage 2 network; `trained` gives the zero-initialised parts random values, as training would."""
    torch.manual_seed(1)
    model = EmotionDeformer(EmotionConfig(n_gaussians=n, audio_dim=AUDIO, **kw))
    if trained:
        with torch.no_grad():
            torch.nn.init.normal_(model.head[2].weight, std=0.3)
            torch.nn.init.normal_(model.head[2].bias, std=0.1)
            model.null.normal_()
            if model.cfg.static_offsets:
                model.static.normal_(std=0.1)
            model.camera_mean.copy_(torch.tensor([0.0, 0.0, 1.0]))
    return model.eval()


def params(seed: int = 0) -> FlameParams:
    g = torch.Generator().manual_seed(seed)
    return FlameParams(expr=torch.randn(1, 8, generator=g), jaw=torch.tensor([[0.2, 0.0, 0.0]]),
                       neck=torch.tensor([[0.0, 0.1, 0.0]]))


def inputs(weights, intensity=2.0, seed=0) -> EmotionInputs:
    g = torch.Generator().manual_seed(seed)
    return EmotionInputs(weights=weights, intensity=intensity, blink=0.4, audio=torch.randn(AUDIO, generator=g),
                         camera=torch.tensor([0.1, 0.0, 0.99]))


def conditions(p: FlameParams, x: EmotionInputs) -> FrameConditions:
    """One frame's FrameConditions with the conditioning of `x`."""
    return FrameConditions(p, x.weights[None], torch.tensor([x.intensity], dtype=torch.float64),
                           torch.tensor([x.blink]), x.audio[None], x.camera)


def avatar_frame(stage1, model, p: FlameParams, x: EmotionInputs):
    """Stage 1 (+ Stage 2 `model` unless None) of one frame through Avatar's differentiable path."""
    return Avatar(stage1, model).evaluate_differentiable(conditions(p, x)).unbind()[0]


def save_bundle(stage1, root, emotion: EmotionDeformer | None = None) -> AvatarBundle:
    """A bundle holding `stage1` on its rig and, when given, Stage 2."""
    bundle = AvatarBundle.create(root)
    stage1.flame_model.save(bundle.flame_path)
    stage1.save(bundle.stage_path("neutral"))
    bundle.update_manifest("neutral", file="neutral.safetensors")
    if emotion is not None:
        emotion.save(bundle.stage_path("emotion"))
        bundle.update_manifest("emotion", file="emotion.safetensors")
    return bundle


def test_offsets_are_zero_at_initialisation(stage1):
    model = make_deformer(stage1.n_gaussians, trained=False)
    p = params()
    dM = mesh_cue(stage1, p)[0]
    assert dM.abs().max() > 1e-4  # the cue is real, the zero comes from the heads
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            off = model.offsets(dM, inputs(onehot("angry"), 3.0))
        assert off.shape == (stage1.n_gaussians, N_OFFSETS)
        assert torch.count_nonzero(off) == 0
    with torch.no_grad():
        g1 = stage1(p)[0]
        g2 = avatar_frame(stage1, model, p, inputs(onehot("angry"), 3.0))
    for a, b in zip(vars(g1).values(), vars(g2).values()):
        assert torch.equal(a, b)


def test_intensity_zero_gives_no_offset(stage1):
    model = make_deformer(stage1.n_gaussians)
    dM = mesh_cue(stage1, params())[0]
    with torch.no_grad():
        assert torch.count_nonzero(model.offsets(dM, inputs(onehot("sad"), 0.0))) == 0
        assert model.offsets(dM, inputs(onehot("sad"), 0.05)).abs().max() > 0
        g1 = stage1(params())[0]
        g0 = avatar_frame(stage1, model, params(), inputs(onehot("sad"), 0.0))
    assert torch.equal(g1.sh, g0.sh) and torch.equal(g1.quats, g0.quats)


def test_intensity_token_interpolates_between_levels(stage1):
    model = make_deformer(stage1.n_gaussians)
    with torch.no_grad():
        rows = model.intensity_rows()
        assert torch.allclose(model.intensity_token(1.5), (rows[1] + rows[2]) / 2)
        assert torch.allclose(model.intensity_token(3.0), rows[3])
        assert torch.allclose(model.intensity_token(0.0), rows[0])


def test_pure_mix_equals_plain_emotion_and_mixes_blend_tokens(stage1):
    model = make_deformer(stage1.n_gaussians)
    dM = mesh_cue(stage1, params())[0]

    with torch.no_grad():
        plain = model.offsets(dM, inputs(torch.from_numpy(one_hot("happy"))))
        mixed = model.offsets(dM, inputs(torch.from_numpy(parse_mix("happy=1.0,sad=0"))))
        unnormalised = model.offsets(dM, inputs(onehot("happy") * 2.5))
        assert torch.equal(plain, mixed)
        assert torch.allclose(plain, unnormalised, atol=1e-6)
        half = model.offsets(dM, inputs(0.5 * onehot("happy") + 0.5 * onehot("sad")))
        sad = model.offsets(dM, inputs(onehot("sad")))
        assert (half - plain).abs().max() > 1e-4 and (half - sad).abs().max() > 1e-4
        # The emotion token of a mix is the mix of the tokens.
        tok = model.tokens(inputs(0.25 * onehot("happy") + 0.75 * onehot("fear")))[1]
        rows = model.emotion_rows()
        assert torch.allclose(tok, 0.25 * rows[EMOTIONS.index("happy")] + 0.75 * rows[EMOTIONS.index("fear")], atol=1e-6)
    # All-zero weights mean neutral.
    assert torch.equal(normalise_mix(torch.zeros(8)), onehot("neutral"))


def test_fast_path_matches_the_differentiable_path(stage1):
    for kw in ({}, {"use_null": False, "n_layers": 1, "n_heads": 4}):
        model = make_deformer(stage1.n_gaussians, **kw)
        dM = mesh_cue(stage1, params(3))[0]
        x = inputs(0.3 * onehot("angry") + 0.7 * onehot("contempt"), 2.2)
        with torch.no_grad():
            fast = model.offsets(dM, x)
        slow = model.offsets(dM, x)
        assert slow.requires_grad
        assert torch.allclose(fast, slow.detach(), atol=1e-5, rtol=1e-4)


def test_no_null_ablation_masks_the_null_token(stage1):
    model = make_deformer(stage1.n_gaussians)
    dM = mesh_cue(stage1, params())[0]
    x = inputs(onehot("fear"))
    ablated = model.without_null()
    zeroed = make_deformer(stage1.n_gaussians)
    with torch.no_grad():
        zeroed.load_state_dict(model.state_dict())
        zeroed.null.zero_()
        assert torch.allclose(ablated.offsets(dM, x), zeroed.offsets(dM, x), atol=1e-6)
        assert (ablated.offsets(dM, x) - model.offsets(dM, x)).abs().max() > 1e-4
    assert sum(p.numel() for p in ablated.parameters()) == sum(p.numel() for p in model.parameters())


def test_static_offsets_are_each_emotions_own_mixed_and_gated_like_the_network(stage1):
    model = make_deformer(stage1.n_gaussians)
    network = make_deformer(stage1.n_gaussians, static_offsets=False)
    dM = mesh_cue(stage1, params())[0]
    happy, sad = model.static[EMOTIONS.index("happy")], model.static[EMOTIONS.index("sad")]
    with torch.no_grad():
        for intensity in (3.0, 1.2):
            x = inputs(0.25 * onehot("happy") + 0.75 * onehot("sad"), intensity)
            static = model.offsets(dM, x) - network.offsets(dM, x)
            assert torch.allclose(static, (0.25 * happy + 0.75 * sad) * intensity / 3, atol=1e-5)
        for grad in (False, True):  # the fast path and the differentiable one
            with torch.set_grad_enabled(grad):
                off = model.offsets(dM, inputs(onehot("happy"), 3.0)) - network.offsets(dM, inputs(onehot("happy"), 3.0))
            assert torch.allclose(off.detach(), happy, atol=1e-5)
    assert "static" not in dict(network.named_parameters())


def test_a_file_from_before_the_static_offsets_loads_without_them(stage1, tmp_path):
    model = make_deformer(stage1.n_gaussians, static_offsets=False)
    model.save(tmp_path / "emotion.safetensors")
    tensors, meta = load_tensors(tmp_path / "emotion.safetensors")
    del meta["config"]["static_offsets"]  # as written before the field existed
    save_tensors(tmp_path / "old.safetensors", tensors, meta)
    old, _ = EmotionDeformer.load(tmp_path / "old.safetensors")
    assert not old.cfg.static_offsets
    dM = mesh_cue(stage1, params())[0]
    with torch.no_grad():
        assert torch.equal(old.offsets(dM, inputs(onehot("angry"))), model.offsets(dM, inputs(onehot("angry"))))


def test_apply_offsets_leaves_teeth_and_turns_in_the_local_frame(stage1):
    with torch.no_grad():
        g = stage1(params())[0]
    n = stage1.n_gaussians
    off = torch.zeros(n, N_OFFSETS)
    off[:, 7:10] = 0.5
    off[:, 10] = -1.0
    out = apply_offsets(g, off)
    assert torch.equal(out.sh[n:], g.sh[n:]) and torch.equal(out.opacity_logits[n:], g.opacity_logits[n:])
    assert torch.allclose(out.sh[:n, 0], g.sh[:n, 0] + 0.5) and torch.equal(out.sh[:, 1:], g.sh[:, 1:])
    assert torch.allclose(out.opacity_logits[:n], g.opacity_logits[:n] - 1)
    assert torch.allclose(out.quats, g.quats)  # dr = 0 keeps the rotation


def test_bad_inputs_are_input_errors(stage1):
    model = make_deformer(stage1.n_gaussians)
    dM = mesh_cue(stage1, params())[0]
    with pytest.raises(InputError, match="intensity"):
        model.offsets(dM, inputs(onehot("happy"), 3.5))
    with pytest.raises(InputError, match="emotion weights"):
        model.offsets(dM, inputs(torch.ones(5)))
    with pytest.raises(InputError, match="audio window"):
        model.offsets(dM, EmotionInputs(onehot("happy"), 1.0, audio=torch.zeros(AUDIO + 1)))
    with pytest.raises(InputError, match="Gaussians"):
        model.offsets(dM[:10], inputs(onehot("happy")))


@pytest.mark.parametrize("text", [False, True])
def test_bundle_round_trip_gives_identical_outputs(stage1, tmp_path, text):
    model = make_deformer(stage1.n_gaussians, d_text=12 if text else 0)
    if text:
        with torch.no_grad():
            model.emotion_text.normal_()
            model.intensity_text.normal_()
    bundle = save_bundle(stage1, tmp_path / "avatar", model)
    loaded = Avatar.open(bundle.root).stage2
    _, meta = EmotionDeformer.load(bundle.stage_path("emotion"))
    assert meta["encoder"] == ("text" if text else "table")
    p, x = params(5), inputs(0.6 * onehot("disgusted") + 0.4 * onehot("surprised"), 2.7)
    with torch.no_grad():
        a = avatar_frame(stage1, model, p, x)
        b = avatar_frame(stage1, loaded, p, x)
    for u, v in zip(vars(a).values(), vars(b).values()):
        assert torch.equal(u, v)


def test_bundle_without_clip_installed_loads_and_bakes(stage1, tmp_path, monkeypatch):
    model = make_deformer(stage1.n_gaussians, d_text=12)
    with torch.no_grad():
        model.emotion_text.normal_()
    bundle = save_bundle(stage1, tmp_path / "avatar", model)
    monkeypatch.setitem(sys.modules, "open_clip", None)  # any `import open_clip` now fails
    loaded = Avatar.open(bundle.root).stage2
    with torch.no_grad():
        g = avatar_frame(stage1, loaded, params(), inputs(onehot("happy"), 1.0))
    assert torch.isfinite(g.sh).all() and len(g) == stage1.n_gaussians + stage1.n_teeth
    from emotalker.core.models.text_embed import clip_text_embeddings

    ckpt = tmp_path / "clip.bin"
    ckpt.write_bytes(b"x")
    with pytest.raises(InputError, match="open_clip"):
        clip_text_embeddings(["happy"], ckpt)


def test_bundle_without_emotion_stage_and_bad_files(stage1, tmp_path):
    bundle = save_bundle(stage1, tmp_path / "avatar")
    assert Avatar.open(bundle.root).stage2 is None  # Stage 1 only: bakes without offsets
    with torch.no_grad():
        g = avatar_frame(stage1, None, params(), inputs(onehot("happy")))
        assert torch.equal(g.sh, stage1(params())[0].sh)
    bad = tmp_path / "bad.safetensors"
    from emotalker.core.base.fileio import save_tensors

    save_tensors(bad, {"x": torch.zeros(1)}, {"format": "something-else"})
    with pytest.raises(InputError, match="not an EmoTalker emotion model"):
        EmotionDeformer.load(bad)
    bad.write_bytes(b"not safetensors")
    with pytest.raises(InputError):
        EmotionDeformer.load(bad)


def test_avatar_open_refuses_a_stage2_trained_for_another_stage1(stage1, tmp_path):
    bundle = save_bundle(stage1, tmp_path / "avatar", make_deformer(stage1.n_gaussians + 5))
    with pytest.raises(InputError, match=rf"{stage1.n_gaussians + 5} face Gaussians.*Stage 1 has {stage1.n_gaussians}") as err:
        Avatar.open(bundle.root)
    assert "emotion.safetensors" in str(err.value)  # names the file at fault
    assert Avatar.open(bundle.root, use_emotion=False).stage2 is None  # --no-emotion still bakes Stage 1
    with pytest.raises(InputError, match="face Gaussians"):  # models in memory get the same check
        Avatar(stage1, make_deformer(stage1.n_gaussians - 1))


def test_avatar_open_loads_both_stages_frozen(stage1, tmp_path):
    bundle = save_bundle(stage1, tmp_path / "avatar", make_deformer(stage1.n_gaussians))
    avatar = Avatar.open(bundle.root, sh_degree=0)
    assert avatar.uses_emotion and avatar.sh_degree == 0
    assert avatar.n_gaussians == stage1.n_gaussians + stage1.n_teeth
    assert avatar.audio_features == avatar.stage2.cfg.features
    assert not any(p.requires_grad for p in (*avatar.stage1.parameters(), *avatar.stage2.parameters()))
    with pytest.raises(InputError, match="no neutral stage"):
        Avatar.open(AvatarBundle.create(tmp_path / "empty"))
