"""Audio features aligned to the video frame rate, with a few frames of context.

Two kinds, chosen by `FeatureConfig.kind`:
- "logmel": 80-band log-mel spectrogram, 25 ms Hann window, 10 ms hop (no
  downloads, the default);
- "speech": the last hidden layer of a wav2vec2 or HuBERT model read from a
  local folder (`model_dir`, a `save_pretrained` folder) through `transformers`
  (the `speech` extra, imported only when asked for; nothing is downloaded).

Either way the raw sequence is resampled to `sub` samples per video frame and
padded with `context` frames of (silent) audio on each side, giving one array
`seq [(T + 2C) * sub, D]`. The window that frame t sees is
`seq[t * sub : (t + 2C + 1) * sub]`, centred on the frame's time t / fps;
`frame_windows` (training batches) and `AudioWindows` (bake, viewport) cut those
windows out. Keeping the shared sequence rather than
the stacked windows keeps long clips at 1/(2C+1) of the memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from emotalker.core.audio.waveform import SAMPLE_RATE, duration_frames
from emotalker.core.base.errors import InputError
from emotalker.core.base.fileio import read_json

FeatureKind = Literal["logmel", "speech"]
FEATURE_KINDS = get_args(FeatureKind)


@dataclass(frozen=True)
class FeatureConfig:
    kind: FeatureKind = "logmel"
    """Audio features: log-mel, or wav2vec2/HuBERT read from `model_dir`."""
    n_mels: int = 80
    """Log-mel bands."""
    win_ms: float = 25.0
    """Log-mel window, milliseconds."""
    hop_ms: float = 10.0
    """Log-mel hop, milliseconds."""
    sub: int = 4
    """Feature samples per video frame."""
    context: int = 2
    """Video frames of audio context on each side of a frame."""
    model_dir: str | None = None
    """Local wav2vec2/HuBERT folder (save_pretrained layout), for kind "speech"."""
    sample_rate: int = SAMPLE_RATE
    """Rate the audio is read at, Hz."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @property
    def window(self) -> int:
        """Feature samples in one frame's window: (2C + 1) * sub."""
        return (2 * self.context + 1) * self.sub


# ---------------------------------------------------------------------------
# log-mel
# ---------------------------------------------------------------------------


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """Triangular filters on the HTK mel scale: [n_mels, n_fft // 2 + 1], each peaking at 1."""
    fmax = sample_rate / 2 if fmax is None else fmax
    to_mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    to_hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = to_hz(np.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2))
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lo) / np.maximum(mid - lo, 1e-9)
    falling = (hi - bins[None]) / np.maximum(hi - mid, 1e-9)
    return np.clip(np.minimum(rising, falling), 0.0, None).astype(np.float32)


def log_mel(samples: np.ndarray, cfg: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """samples [N] at cfg.sample_rate -> log-mel [M, n_mels], frame i centred on i * hop.

    Frames are centred (the signal is zero-padded by half a window), so frame i
    describes time i * hop_ms.
    """
    win = int(round(cfg.sample_rate * cfg.win_ms / 1000))
    hop = int(round(cfg.sample_rate * cfg.hop_ms / 1000))
    n_fft = 1 << (win - 1).bit_length()
    x = np.pad(np.asarray(samples, np.float32), (n_fft // 2, n_fft // 2))
    n_frames = 1 + max(0, (len(x) - n_fft) // hop)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop][:n_frames]
    window = np.zeros(n_fft, np.float32)
    start = (n_fft - win) // 2
    window[start : start + win] = np.hanning(win + 2)[1:-1]  # periodic-style Hann without zero ends
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    mel = power.astype(np.float32) @ mel_filterbank(cfg.n_mels, n_fft, cfg.sample_rate).T
    return np.log(np.maximum(mel, 1e-5)).astype(np.float32)


# ---------------------------------------------------------------------------
# wav2vec2 / HuBERT from a local folder
# ---------------------------------------------------------------------------


@dataclass
class SpeechEncoder:
    """A wav2vec2/HuBERT model loaded from a local folder; hidden states at its own rate."""

    model: object
    rate: float  # hidden states per second
    t0: float  # time (s) that hidden state 0 describes: the centre of its receptive field
    normalize: bool
    dim: int

    @classmethod
    def load(cls, model_dir: str | Path) -> "SpeechEncoder":
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise InputError(model_dir, "not a speech model folder (no config.json); pass a wav2vec2/HuBERT save_pretrained folder")
        try:
            from transformers import AutoModel
        except ImportError:
            raise InputError(model_dir, "speech features need the `speech` extra: pip install 'emotalker[speech]'") from None
        try:
            model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise InputError(model_dir, f"could not load the speech model ({exc})") from None
        model.eval()
        cfg = model.config
        if not hasattr(cfg, "conv_stride"):
            raise InputError(model_dir, f"{type(model).__name__} is not a wav2vec2/HuBERT-style model (no conv feature encoder)")
        stride, field_ = 1, 1
        for k, s in zip(cfg.conv_kernel, cfg.conv_stride):
            field_ += (k - 1) * stride
            stride *= s
        normalize = True
        pre = model_dir / "preprocessor_config.json"
        if pre.is_file():
            normalize = bool(read_json(pre, "preprocessor config").get("do_normalize", True))
        return cls(model, SAMPLE_RATE / stride, field_ / 2 / SAMPLE_RATE, normalize, int(cfg.hidden_size))

    def __call__(self, samples: np.ndarray, chunk_s: float = 20.0, margin_s: float = 1.0) -> np.ndarray:
        """samples [N] at 16 kHz -> hidden states [M, dim].

        Long audio runs in chunks of `chunk_s` seconds, each seen with `margin_s`
        of audio either side that is then dropped, so memory stays bounded
        (self-attention over a whole long clip would not) while every kept
        state still has context on both sides.
        """
        import torch

        x = np.asarray(samples, np.float32)
        if self.normalize:
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        stride = int(round(SAMPLE_RATE / self.rate))
        chunk = max(1, int(chunk_s * SAMPLE_RATE) // stride) * stride
        margin = int(np.ceil(margin_s * SAMPLE_RATE / stride)) * stride
        run = lambda part: self.model(torch.from_numpy(part)[None]).last_hidden_state[0].float().numpy()  # noqa: E731
        with torch.inference_mode():
            if len(x) <= chunk + 2 * margin:
                return run(x)
            outs = []
            for a in range(0, len(x), chunk):
                lo, hi = max(0, a - margin), min(len(x), a + chunk + margin)
                first = (a - lo) // stride
                outs.append(run(x[lo:hi])[first : first + chunk // stride])
        return np.concatenate(outs)


# ---------------------------------------------------------------------------
# alignment to video frames
# ---------------------------------------------------------------------------


def resample_sequence(seq: np.ndarray, seq_rate: float, seq_t0: float, times: np.ndarray) -> np.ndarray:
    """Linear interpolation of seq [M, D] (item i at time seq_t0 + i / seq_rate) at times [K] -> [K, D].

    Times beyond either end take the end value.
    """
    pos = np.clip((np.asarray(times, np.float64) - seq_t0) * seq_rate, 0.0, len(seq) - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, len(seq) - 1)
    w = (pos - i0).astype(np.float32)[:, None]
    return seq[i0] * (1 - w) + seq[i1] * w


class AudioFeaturizer:
    """Turns 16 kHz mono samples into the frame-aligned sequence the A2E model reads.

    featurizer = AudioFeaturizer(cfg); seq = featurizer(samples, fps, n_frames)
    -> seq [(n_frames + 2 * context) * sub, dim].
    """

    def __init__(self, cfg: FeatureConfig = FeatureConfig()):
        if cfg.kind not in FEATURE_KINDS:
            raise ValueError(f"unknown feature kind {cfg.kind!r}: use one of {', '.join(FEATURE_KINDS)}")
        if cfg.kind == "speech" and not cfg.model_dir:
            raise InputError(None, "speech features need a local model folder (model_dir)")
        self.cfg = cfg
        self._encoder: SpeechEncoder | None = None

    @property
    def encoder(self) -> SpeechEncoder:
        if self._encoder is None:
            self._encoder = SpeechEncoder.load(self.cfg.model_dir)
        return self._encoder

    @property
    def dim(self) -> int:
        return self.cfg.n_mels if self.cfg.kind == "logmel" else self.encoder.dim

    def __call__(self, samples: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
        cfg = self.cfg
        # Silence around the clip so the context of the first and last frames is real audio features of silence.
        pad_s = (cfg.context + 1) / fps
        pad = int(np.ceil(pad_s * cfg.sample_rate))
        x = np.pad(np.asarray(samples, np.float32), (pad, pad))
        if cfg.kind == "logmel":
            seq, rate, t0 = log_mel(x, cfg), 1000.0 / cfg.hop_ms, 0.0
        else:
            enc = self.encoder
            seq, rate, t0 = enc(x), enc.rate, enc.t0
        j = np.arange((n_frames + 2 * cfg.context) * cfg.sub)
        # Sub-sample j of frame t's centre block sits at t/fps + (k + 0.5)/(fps*sub) - 0.5/fps.
        times = (j + 0.5) / (fps * cfg.sub) - (cfg.context + 0.5) / fps
        return resample_sequence(seq, rate, t0 - pad / cfg.sample_rate, times).astype(np.float32)


def frame_windows(seq, sub: int, context: int):
    """seq [..., (T + 2C) * sub, D] -> windows [..., T, (2C + 1) * sub * D] (numpy or torch).

    A view when possible: frame t reads seq[t * sub : (t + 2C + 1) * sub].
    """
    W = (2 * context + 1) * sub
    T = seq.shape[-2] // sub - 2 * context
    if isinstance(seq, np.ndarray):
        win = np.lib.stride_tricks.sliding_window_view(seq, W, axis=-2)[..., ::sub, :, :]  # [..., T', D, W]
        win = np.swapaxes(win, -1, -2)[..., :T, :, :]
        return win.reshape(*seq.shape[:-2], T, W * seq.shape[-1])
    win = seq.unfold(-2, W, sub)[..., :T, :, :]  # [..., T, D, W]
    return win.transpose(-1, -2).reshape(*seq.shape[:-2], T, W * seq.shape[-1])


class AudioWindows:
    """Stage 2's audio input, cut on demand: the clip's feature sequence is computed once and each
    frame's window `[(2C+1) * sub * D]` only when asked for, so a bake holds the sequence (1/(2C+1)
    of the stacked windows) and the windows of one chunk of frames.

    samples [S] at 16 kHz; frames are indices at `fps`, frame 0 starting at audio time 0; the sequence
    covers `n_frames` (default: the frames the audio covers). A frame's window does not depend on
    `n_frames` or on which other frames are asked for.
    """

    def __init__(self, samples: np.ndarray, features: FeatureConfig, fps: float, n_frames: int | None = None):
        self.n_frames = max(1, duration_frames(len(samples), fps) if n_frames is None else int(n_frames))
        self.sub, self.context = features.sub, features.context
        self.seq = AudioFeaturizer(features)(samples, fps, self.n_frames)

    def __call__(self, frames: np.ndarray, hold_ends: bool = False) -> np.ndarray:
        """The windows of `frames` -> [len(frames), (2C+1) * sub * D] float32. With `hold_ends` (the bake's
        timeline, which may reach past the sound) a frame past the sequence reads its nearest frame's window."""
        frames = np.asarray(frames, dtype=np.int64)
        if hold_ends:
            frames = np.clip(frames, 0, self.n_frames - 1)
        elif frames.size and not (0 <= frames.min() and frames.max() < self.n_frames):
            raise ValueError(f"frames {frames.min()}..{frames.max()} reach outside 0..{self.n_frames - 1}")
        # Frame t reads seq[t * sub : (t + 2C + 1) * sub], flattened row by row (as frame_windows does).
        rows = frames[:, None] * self.sub + np.arange((2 * self.context + 1) * self.sub)
        return np.ascontiguousarray(self.seq[rows].reshape(len(frames), -1), np.float32)


def frame_audio_windows(samples: np.ndarray, features: FeatureConfig, fps: float, frames: np.ndarray,
                        hold_ends: bool = False) -> np.ndarray:
    """The windows of `frames` at once (AudioWindows); frames past the end of the audio read the silence it
    is padded with, or with `hold_ends` the window of the nearest frame the audio covers."""
    frames = np.asarray(frames, dtype=np.int64)
    windows = AudioWindows(samples, features, fps, None if hold_ends else int(frames.max()) + 1)
    return windows(frames, hold_ends)
