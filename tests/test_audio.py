"""Audio loading (mono mixing, resampling, validation) and frame-aligned features."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from emotalker.core.audio.waveform import SAMPLE_RATE, load_audio, resample, to_mono
from emotalker.core.audio.features import (AudioFeaturizer, AudioWindows, FeatureConfig, frame_audio_windows,
                                           frame_windows, log_mel, mel_filterbank)
from emotalker.core.base.errors import InputError


def tone(freq, rate, seconds, amp=0.5):
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x, rate):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / rate)[spec.argmax()]


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_keeps_pitch_length_and_level(tmp_path, rate):
    path = tmp_path / "tone.wav"
    sf.write(path, tone(440.0, rate, 1.0, amp=0.5), rate, subtype="FLOAT")
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - SAMPLE_RATE) <= 1
    assert abs(peak_hz(x, SAMPLE_RATE) - 440.0) < 2.0
    # Level of a steady tone survives (ignore the filter's edges).
    mid = x[2000:-2000]
    assert np.sqrt((mid ** 2).mean()) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_resampling_removes_content_above_the_new_nyquist():
    rate = 48000
    x = tone(440.0, rate, 1.0) + tone(11000.0, rate, 1.0)  # 11 kHz cannot exist at 16 kHz
    y = resample(x, rate, SAMPLE_RATE)
    spec = np.abs(np.fft.rfft(y[1000:-1000]))
    freqs = np.fft.rfftfreq(len(y) - 2000, 1 / SAMPLE_RATE)
    assert spec[np.abs(freqs - 440) < 5].max() > 100 * spec[freqs > 4500].max()


def test_stereo_and_multichannel_are_averaged_to_mono(tmp_path):
    left, right = tone(300.0, SAMPLE_RATE, 0.5, 0.6), tone(700.0, SAMPLE_RATE, 0.5, 0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], 1), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-6)
    # Opposite channels cancel: that is what averaging means, and it must not crash the mixer.
    quad = np.stack([left, -left, right, right], 1)
    np.testing.assert_allclose(to_mono(quad), right / 2, atol=1e-6)


def test_stereo_at_another_rate_is_mixed_then_resampled(tmp_path):
    rate = 44100
    path = tmp_path / "stereo44.flac"
    sf.write(path, np.stack([tone(500.0, rate, 1.0), np.zeros(rate, np.float32)], 1), rate)
    x = load_audio(path)
    assert abs(len(x) - SAMPLE_RATE) <= 1
    assert abs(peak_hz(x, SAMPLE_RATE) - 500.0) < 2.0
    assert np.abs(x[2000:-2000]).max() == pytest.approx(0.25, rel=0.02)


def _write(path, data, rate=SAMPLE_RATE):
    sf.write(path, np.asarray(data, np.float32), rate, subtype="FLOAT")
    return path


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda p: p / "missing.wav", "not found"),
        (lambda p: (p / "junk.wav").write_bytes(b"RIFF\x00\x00junk not audio") and p / "junk.wav", "not a readable audio file"),
        (lambda p: _write(p / "empty.wav", np.zeros(0)), "empty"),
        (lambda p: _write(p / "silent.wav", np.zeros(16000)), "silent"),
        (lambda p: _write(p / "nan.wav", np.r_[tone(200, SAMPLE_RATE, 0.1), np.nan]), "NaN or infinite"),
        (lambda p: _write(p / "inf.wav", np.r_[np.inf, tone(200, SAMPLE_RATE, 0.1)]), "NaN or infinite"),
    ],
)
def test_bad_audio_gives_one_clear_error(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(InputError) as err:
        load_audio(path)
    assert problem in str(err.value)
    assert str(path) in str(err.value)


def test_log_mel_shape_and_band_of_a_tone():
    cfg = FeatureConfig()
    mel = log_mel(tone(1000.0, SAMPLE_RATE, 1.0), cfg)
    assert mel.shape == (101, 80)  # centred frames every 10 ms
    fb = mel_filterbank(80, 512, SAMPLE_RATE)
    expected_band = fb[:, int(round(1000 / (SAMPLE_RATE / 512)))].argmax()
    assert abs(int(np.median(mel[5:-5].argmax(1))) - expected_band) <= 1


def test_features_are_aligned_to_video_frames():
    """A click of sound at frame 20 lights up the centre of frame 20's window, not its neighbours'."""
    fps, T = 25.0, 40
    cfg = FeatureConfig(context=2, sub=4)
    x = 1e-3 * np.random.default_rng(0).standard_normal(int(T / fps * SAMPLE_RATE)).astype(np.float32)
    t0 = int(20 / fps * SAMPLE_RATE)
    x[t0 - 160 : t0 + 160] += tone(2000.0, SAMPLE_RATE, 0.02)
    seq = AudioFeaturizer(cfg)(x, fps, T)
    assert seq.shape == ((T + 2 * cfg.context) * cfg.sub, 80)
    win = frame_windows(seq, cfg.sub, cfg.context).reshape(T, cfg.window, 80)
    energy = win.mean(-1)  # [T, window]
    centre = slice(cfg.context * cfg.sub, (cfg.context + 1) * cfg.sub)
    loudest_frame = energy[:, centre].max(1).argmax()
    assert loudest_frame == 20
    # Frame 18 sees the click two frames ahead, at the end of its window: that is the context.
    assert energy[18, -cfg.sub:].max() > energy[18, :cfg.sub].max() + 3


def test_frame_audio_windows_pick_frames_and_hold_the_ends():
    fps, T = 25.0, 12
    cfg = FeatureConfig(context=2, sub=4)
    x = np.random.default_rng(1).standard_normal(int(T / fps * SAMPLE_RATE)).astype(np.float32)
    every = frame_windows(AudioFeaturizer(cfg)(x, fps, T), cfg.sub, cfg.context)
    all_frames = frame_audio_windows(x, cfg, fps, np.arange(T))
    assert all_frames.dtype == np.float32 and all_frames.flags.c_contiguous
    np.testing.assert_array_equal(all_frames, every)
    # A frame's window does not depend on the other frames asked for.
    np.testing.assert_array_equal(frame_audio_windows(x, cfg, fps, np.array([7, 2])), every[[7, 2]])
    # Past either end: the silence padding, or with hold_ends the nearest frame the audio covers.
    held = frame_audio_windows(x, cfg, fps, np.array([-3, 0, T + 5]), hold_ends=True)
    np.testing.assert_array_equal(held, every[[0, 0, T - 1]])
    past = frame_audio_windows(x, cfg, fps, np.array([T + 5]))
    assert not np.array_equal(past[0], every[T - 1])


def test_audio_windows_cut_on_demand_equal_the_stacked_windows():
    fps, T = 25.0, 40
    cfg = FeatureConfig(context=2, sub=4)
    x = np.random.default_rng(2).standard_normal(int(T / fps * SAMPLE_RATE)).astype(np.float32)
    every = frame_windows(AudioFeaturizer(cfg)(x, fps, T), cfg.sub, cfg.context)
    windows = AudioWindows(x, cfg, fps)
    assert windows.n_frames == T and windows.seq.nbytes * (2 * cfg.context + 1) <= every.nbytes * 1.2
    for chunk in (np.arange(8), np.arange(32, 40), np.array([39, 3, 17])):
        np.testing.assert_array_equal(windows(chunk), every[chunk])
    np.testing.assert_array_equal(windows(np.array([-1, T + 3]), hold_ends=True), every[[0, T - 1]])
    with pytest.raises(ValueError, match="reach outside"):
        windows(np.array([T]))
    # The sequence's length changes no window.
    np.testing.assert_array_equal(AudioWindows(x, cfg, fps, n_frames=T + 9)(np.arange(T)), every)


def test_frame_windows_numpy_and_torch_agree():
    torch = pytest.importorskip("torch")
    seq = np.random.default_rng(1).standard_normal(((10 + 4) * 3, 5)).astype(np.float32)
    a = frame_windows(seq, 3, 2)
    b = frame_windows(torch.from_numpy(seq), 3, 2).numpy()
    assert a.shape == (10, 5 * 3 * 5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[4].reshape(15, 5), seq[12:27])


def test_speech_features_from_a_local_tiny_wav2vec2(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8, 8, 8), conv_kernel=(10, 3, 3), conv_stride=(5, 4, 2),
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, vocab_size=8,
    )
    transformers.Wav2Vec2Model(config).save_pretrained(tmp_path / "tiny")
    cfg = FeatureConfig(kind="speech", model_dir=str(tmp_path / "tiny"), context=1, sub=2)
    featurizer = AudioFeaturizer(cfg)
    fps, T = 25.0, 12
    x = tone(300.0, SAMPLE_RATE, T / fps)
    seq = featurizer(x, fps, T)
    assert featurizer.dim == 16
    assert featurizer.encoder.rate == SAMPLE_RATE / 40
    assert seq.shape == ((T + 2) * 2, 16) and np.isfinite(seq).all()
    # The same audio gives the same features: nothing random at inference.
    np.testing.assert_allclose(seq, featurizer(x, fps, T), atol=1e-5)
    # Long audio runs in chunks (bounded memory) and yields as many states as one pass.
    long = np.tile(x, 8)
    whole = featurizer.encoder(long, chunk_s=100.0)
    chunked = featurizer.encoder(long, chunk_s=0.5, margin_s=0.1)
    assert abs(len(chunked) - len(whole)) <= 1 and np.isfinite(chunked).all()


def test_speech_features_refuse_a_folder_without_a_model(tmp_path):
    with pytest.raises(InputError, match="config.json"):
        AudioFeaturizer(FeatureConfig(kind="speech", model_dir=str(tmp_path)))(np.ones(1600, np.float32), 25.0, 4)
