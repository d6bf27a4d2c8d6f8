"""The A2E model, its training loop, its bundle file and its two commands."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from a2e_fixture import FPS, make_dataset, make_rig
from emotalker.core.models.a2e import A2EConfig, A2EModel, emotion_condition
from emotalker.core.audio.features import FeatureConfig
from emotalker.core.base.emotions import EMOTIONS, one_hot, parse_mix
from emotalker.core.base.errors import InputError
from emotalker.core.rig.flame import FlameParams, FlameRig
from emotalker.core.rig.flame_subset import vertex_subset

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Models this small run faster on one thread, far faster on a busy machine; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = dict(d_model=32, n_heads=2, n_layers=2, ffn=64, past=4, future=2)


def tiny_model(n_expr=6, seed=0, **kw) -> A2EModel:
    torch.manual_seed(seed)
    model = A2EModel(A2EConfig(n_expr=n_expr, feat_dim=80, features=FeatureConfig(context=1, sub=2), **{**TINY, **kw}))
    with torch.no_grad():  # non-trivial emotion paths, as after training
        model.emotion_out.weight.normal_()
    return model.eval()


def random_inputs(model, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    fc = model.cfg.features
    return torch.randn((T + 2 * fc.context) * fc.sub, 80, generator=g)


def test_intensity_zero_gives_exactly_the_neutral_prediction():
    model, T = tiny_model(), 30
    seq = random_inputs(model, T)
    w = lambda name: torch.from_numpy(parse_mix(name)).expand(T, -1)  # noqa: E731
    s = lambda v: torch.full((T,), float(v))  # noqa: E731
    neutral = model.predict(seq, w("neutral"), s(2.0))
    for name in ("happy", "sad", "angry=0.5,fear=0.5"):
        torch.testing.assert_close(model.predict(seq, w(name), s(0.0)), neutral, rtol=0, atol=0)
    # ... and the emotion does matter once the intensity is not zero.
    assert (model.predict(seq, w("happy"), s(2.0)) - neutral).abs().max() > 1e-3
    # Per-frame intensity: frames at 0 stay neutral while others move.
    ramp = torch.linspace(0, 3, T)
    ramp[:10] = 0
    mixed = model.predict(seq, w("happy"), ramp)
    frames_far_from_ramp = slice(0, 10 - model.cfg.halo[1] - 1)  # beyond the attention band's reach
    torch.testing.assert_close(mixed[frames_far_from_ramp], neutral[frames_far_from_ramp], rtol=0, atol=0)


def test_emotion_condition_zeroes_neutral_and_scales_with_intensity():
    w = torch.tensor(parse_mix("neutral=0.5,happy=0.5"))
    c = emotion_condition(w, torch.tensor(3.0))
    assert c[EMOTIONS.index("neutral")] == 0 and c[EMOTIONS.index("happy")] == pytest.approx(0.5)
    torch.testing.assert_close(emotion_condition(w, torch.tensor(1.5)), c / 2)


def test_chunked_prediction_equals_one_pass():
    """Long clips run in chunks (bounded memory) with the same result as one pass."""
    model, T = tiny_model(), 57
    seq = random_inputs(model, T, seed=3)
    w = torch.from_numpy(one_hot("sad")).expand(T, -1)
    s = torch.linspace(0, 3, T)
    whole = model.predict(seq, w, s, chunk=1000)
    for chunk in (1, 7, 20):
        torch.testing.assert_close(model.predict(seq, w, s, chunk=chunk), whole, rtol=1e-5, atol=1e-5)


def test_vertex_subset_rig_poses_those_vertices_exactly():
    full = make_rig()
    idx = np.array([40, 3, 17, 44])
    sub = vertex_subset(full, idx)
    g = torch.Generator().manual_seed(0)
    params = FlameParams(expr=torch.randn(3, full.n_expr, generator=g), jaw=0.2 * torch.randn(3, 3, generator=g),
                         neck=0.1 * torch.randn(3, 3, generator=g), shape=torch.randn(3, full.n_shape, generator=g),
                         eyelids=torch.rand(3, 2, generator=g))
    torch.testing.assert_close(FlameRig(sub)(params)[0][:, : len(idx)], FlameRig(full)(params)[0][:, idx], rtol=1e-5, atol=1e-6)


def test_tiny_model_overfits_a_short_clip():
    from emotalker.core.training.a2e import ClipData, TrainA2EConfig, fit_normalisation, sample_batch

    rng = np.random.default_rng(0)
    T, fc = 40, FeatureConfig(context=1, sub=2)
    seq = rng.standard_normal(((T + 2) * 2, 80)).astype(np.float32)
    params = rng.standard_normal((T, 12)).astype(np.float32)  # arbitrary targets: only memorising fits them
    clip = ClipData("c", seq, params, one_hot("happy"), 2.0, "happy")
    model = tiny_model(dropout=0.0)
    fit_normalisation(model, [clip])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    cfg = TrainA2EConfig(batch=1, gain_db=0)
    batch = sample_batch([clip], cfg, T, fc.sub, fc.context, rng)
    model.train()
    losses = []
    for _ in range(300):
        y = model(*batch[:3])
        loss = ((y - model.normalize(batch[3])) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 0.5
    assert losses[-1] < 0.02 * losses[0]


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model()
    model.save(tmp_path / "a2e.safetensors", {"fps": 30.0})
    loaded, meta = A2EModel.load(tmp_path / "a2e.safetensors")
    assert meta["fps"] == 30.0 and loaded.cfg == model.cfg
    seq, T = random_inputs(model, 9), 9
    w, s = torch.from_numpy(one_hot("fear")).expand(T, -1), torch.ones(T)
    torch.testing.assert_close(loaded.predict(seq, w, s), model.predict(seq, w, s))


def test_load_refuses_other_files(tmp_path):
    from emotalker.core.base.fileio import save_tensors

    save_tensors(tmp_path / "x.safetensors", {"a": np.zeros(2)}, {"format": "something-else"})
    with pytest.raises(InputError, match="not an EmoTalker A2E model"):
        A2EModel.load(tmp_path / "x.safetensors")


def test_rig_without_lip_region_asks_for_one():
    from emotalker.core.models.a2e import lip_indices

    rig = make_rig()
    rig.regions = {}
    with pytest.raises(InputError, match="region.lips"):
        lip_indices(rig, "flame_model.npz")


# ---------------------------------------------------------------------------
# training and the commands, on the tiny dataset
# ---------------------------------------------------------------------------

TRAIN_TINY = ["--steps", "150", "--batch", "8", "--device", "cpu", "--progress", "none"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A dataset and an avatar trained on it through `emotalker train a2e` (small model for speed)."""
    from emotalker.cli.main import main

    root = tmp_path_factory.mktemp("a2e")
    ds = make_dataset(root / "dataset", T=50)
    args = ["train", "a2e", str(ds), "--avatar", str(root / "avatar"), *TRAIN_TINY, "--window", "32", "--d-model", "48"]
    assert main(args) == 0
    return ds, root / "avatar"


def test_train_a2e_writes_the_bundle_and_learns(trained):
    from emotalker.core.models.bundle import AvatarBundle

    ds, avatar = trained
    bundle = AvatarBundle.open(avatar)
    assert bundle.has_stage("a2e") and bundle.flame_path.is_file()
    assert not (avatar / "a2e.ckpt.safetensors").exists() and not bundle.checkpoint_path("a2e").exists()
    stage = bundle.manifest()["stages"]["a2e"]
    assert stage["fps"] == FPS and stage["features"] == "logmel" and stage["config"]["n_expr"] == 6
    m = stage["metrics"]
    assert m["split"] == "test"
    # The fixture's jaw follows the audio envelope: even 150 steps must beat the mean clearly.
    assert m["lip_vertex_err_mm"] < 0.6 * m["baseline_lip_vertex_err_mm"]
    assert m["jaw_corr"] > 0.7


def test_a2e_command_writes_curves(trained, tmp_path):
    from emotalker.cli.main import main

    ds, avatar = trained
    audio = ds / "clips" / "happy_02" / "audio.wav"
    out = tmp_path / "curves.npz"
    assert main(["a2e", str(avatar), "--audio", str(audio), "--emotion", "happy", "--intensity", "2", "--out", str(out), "--device", "cpu"]) == 0
    with np.load(out) as c:
        T = len(c["expr"])
        assert T == 50 and float(c["fps"]) == FPS
        assert str(c["format"]) == "emotalker-flame-curves/1" and int(c["frame_start"]) == 1  # the bake's format
        assert c["expr"].shape == (T, 6) and c["jaw"].shape == (T, 3) and c["neck"].shape == (T, 3)
        assert c["emotion_weights"].shape == (T, 8) and c["intensity"].shape == (T,)
        assert list(c["emotions"]) == list(EMOTIONS) and list(c["expr_names"]) == [f"e{i}" for i in range(6)]
        happy = c["expr"]
    from emotalker.bake.engine import FlameCurves

    assert FlameCurves.load(out, 6).expr.shape == (50, 6)  # what `bake --flame-curves` reads
    zero = tmp_path / "zero.npz"
    neutral = tmp_path / "neutral.npz"
    assert main(["a2e", str(avatar), "--audio", str(audio), "--emotion", "sad", "--intensity", "0", "--out", str(zero), "--device", "cpu"]) == 0
    assert main(["a2e", str(avatar), "--audio", str(audio), "--emotion", "neutral", "--out", str(neutral), "--device", "cpu"]) == 0
    with np.load(zero) as z, np.load(neutral) as n:
        np.testing.assert_array_equal(z["expr"], n["expr"])
        # The fixture's happy offset is +1 on e1 at intensity 3: the model learnt its direction.
        assert (happy - n["expr"])[:, 1].mean() > 0.2


def test_a2e_command_errors_are_one_line(trained, tmp_path, capsys):
    from emotalker.cli.main import main

    ds, avatar = trained
    audio = ds / "clips" / "happy_02" / "audio.wav"
    out = tmp_path / "c.npz"
    assert main(["a2e", str(avatar), "--audio", str(audio), "--emotion", "joyful", "--out", str(out)]) == 2
    assert "unknown emotion 'joyful'" in capsys.readouterr().err
    silent = tmp_path / "silent.wav"
    import soundfile as sf

    sf.write(silent, np.zeros(8000, np.float32), 16000)
    assert main(["a2e", str(avatar), "--audio", str(silent), "--out", str(out)]) == 2
    assert "silent" in capsys.readouterr().err and not out.exists()
    assert main(["a2e", str(tmp_path), "--audio", str(audio), "--out", str(out)]) == 2


def test_resume_continues_to_the_same_weights(tmp_path, monkeypatch):
    from emotalker.core.base.progress import Progress
    from emotalker.core.models.bundle import AvatarBundle
    from emotalker.core.training.a2e import TrainA2EConfig, train_a2e

    ds = make_dataset(tmp_path / "ds", clips_per_emotion=2, T=30, images=True)
    cfg = TrainA2EConfig(steps=12, batch=2, window=16, checkpoint_every=5, model=A2EConfig(**{**TINY, "d_model": 16}))
    train_a2e(ds, tmp_path / "straight", cfg, device="cpu", progress="none")

    real_update = Progress.update

    def interrupt_at_7(self, n=1, **kw):
        real_update(self, n, **kw)
        if self.step == 7:
            raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "update", interrupt_at_7)
    with pytest.raises(KeyboardInterrupt):
        train_a2e(ds, tmp_path / "resumed", cfg, device="cpu", progress="none")
    bundle = AvatarBundle(tmp_path / "resumed")
    ckpt = bundle.checkpoint_path("a2e")
    assert ckpt.exists() and not (tmp_path / "resumed" / "a2e.safetensors").exists()
    # Bundles from before checkpoints/ hold an interrupted run's checkpoint at their root: resume reads it too.
    legacy = tmp_path / "resumed" / "a2e.ckpt.safetensors"
    ckpt.rename(legacy)
    monkeypatch.setattr(Progress, "update", real_update)
    train_a2e(ds, tmp_path / "resumed", cfg, device="cpu", progress="none", resume=True)
    assert not legacy.exists() and not ckpt.exists()
    a, _ = A2EModel.load(tmp_path / "straight" / "a2e.safetensors")
    b, _ = A2EModel.load(tmp_path / "resumed" / "a2e.safetensors")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, msg=name)


def test_speech_features_without_a_model_folder_are_one_clear_error(tmp_path, capsys):
    from emotalker.cli.main import main

    assert main(["train", "a2e", str(tmp_path / "ds"), "--avatar", str(tmp_path / "av"), "--features", "speech"]) == 2
    err = capsys.readouterr().err
    assert "--speech-model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "av").exists()  # refused before anything was written


def test_train_and_run_with_speech_features_from_a_local_model(tmp_path):
    """The wav2vec2 path end to end: a tiny random model saved locally, trained on for a few steps."""
    transformers = pytest.importorskip("transformers")
    from emotalker.cli.main import main

    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8, 8, 8), conv_kernel=(10, 3, 3), conv_stride=(5, 4, 2),
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, vocab_size=8,
    )
    transformers.Wav2Vec2Model(config).save_pretrained(tmp_path / "w2v")
    ds = make_dataset(tmp_path / "ds", clips_per_emotion=2, T=30)
    avatar = tmp_path / "avatar"
    assert main(["train", "a2e", str(ds), "--avatar", str(avatar), "--features", "speech", "--speech-model", str(tmp_path / "w2v"),
                 "--steps", "3", "--batch", "2", "--window", "16", "--d-model", "16", "--device", "cpu", "--progress", "none"]) == 0
    model, meta = A2EModel.load(avatar / "a2e.safetensors")
    assert model.cfg.features.kind == "speech" and model.cfg.feat_dim == 16
    out = tmp_path / "curves.npz"
    assert main(["a2e", str(avatar), "--audio", str(ds / "clips" / "sad_01" / "audio.wav"), "--emotion", "sad",
                 "--out", str(out), "--device", "cpu"]) == 0
    with np.load(out) as c:
        assert c["expr"].shape == (30, 6) and np.isfinite(c["expr"]).all()
