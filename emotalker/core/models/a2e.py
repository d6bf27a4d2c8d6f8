"""The audio-to-expression model (A2E): audio features + emotion + intensity -> FLAME expression, jaw, neck.

GaussianEmoTalker regresses FLAME expression and local pose from audio with an
emotion label. No pretrained speech encoder can be downloaded here, so this A2E
is trained per identity on the dataset's tracking (see `train_a2e`).

Architecture (one frame = one token):
- each feature sample is normalised and squeezed to `squeeze` values by one
  linear map shared over time (per-identity data is small: this cut the
  held-out lip error by a tenth against a full-width input layer); each frame
  reads its window of those (frame_windows: (2C+1)*sub samples centred on the
  frame) through a two-layer MLP to d_model;
- the emotion condition c_t = (s_t / 3) * (w_t @ E), with w_t [8] the emotion
  weights, s_t the intensity in [0, 3] and E's `neutral` row held at zero, is
  added to the token; the same scaled mix also adds a learned direct offset to
  the output. Every path from emotion to output goes through c_t or that offset,
  both exactly zero when s_t = 0 or the emotion is neutral, so intensity 0 gives
  the neutral prediction by construction;
- a pre-norm transformer whose attention is a band (frames t-past .. t+future)
  with a learned relative-position bias, so a clip of any length can be run in
  chunks with bounded memory and the same result (`predict`);
- a linear head to [E + 6] values, de-normalised with the training mean/std:
  expr [E], jaw [3], neck [3].

Saved to the bundle as `a2e.safetensors` (weights and normalisation buffers)
with the config (`A2EConfig.to_dict`) in the metadata.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from emotalker.core.audio.features import FeatureConfig, frame_windows
from emotalker.core.base.emotions import EMOTIONS, MAX_INTENSITY, NEUTRAL_INDEX, check_intensity
from emotalker.core.models.bundle import load_stage_model
from emotalker.core.base.errors import InputError
from emotalker.core.base.fileio import save_tensors
from emotalker.core.base.threads import single_threaded

FORMAT = "emotalker-a2e/1"


@dataclass(frozen=True)
class A2EConfig:
    n_expr: int = 0
    """FLAME expression components predicted (training takes the rig's)."""
    feat_dim: int = 80
    """Width of one audio feature sample (training takes the featurizer's)."""
    features: FeatureConfig = field(default_factory=FeatureConfig)
    """The audio features the model reads (training takes TrainA2EConfig.features)."""
    d_model: int = 128
    """Transformer width."""
    n_heads: int = 4
    """Attention heads."""
    n_layers: int = 2
    """Transformer layers."""
    ffn: int = 256
    """Hidden width of each layer's feed-forward block."""
    past: int = 12
    """Frames each token attends to before itself."""
    future: int = 3
    """Frames each token attends to after itself."""
    dropout: float = 0.1
    """Dropout rate while training."""
    squeeze: int = 24
    """Above 0: first project each feature sample to this many values (shared weights); 0: off."""

    @property
    def n_out(self) -> int:
        return self.n_expr + 6

    @property
    def halo(self) -> tuple[int, int]:
        """Frames of context (before, after) that make a chunk's outputs exact."""
        return self.n_layers * self.past, self.n_layers * self.future

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = self.features.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "A2EConfig":
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        d["features"] = FeatureConfig.from_dict(d.get("features", {}))
        d.setdefault("squeeze", 0)  # files from before the input squeeze existed have none
        return cls(**d)


def emotion_condition(weights, intensity):
    """The scaled emotion mix every emotion path goes through.

    weights [..., 8] over EMOTIONS, intensity [...] -> [..., 8] equal to
    weights * intensity / 3 with the neutral entry zeroed.
    """
    keep = torch.ones(len(EMOTIONS), dtype=weights.dtype, device=weights.device)
    keep[NEUTRAL_INDEX] = 0
    return weights * keep * (intensity[..., None] / MAX_INTENSITY)


class BandAttention(nn.Module):
    """Multi-head self-attention over a band of frames [t - past, t + future] with relative-position bias."""

    def __init__(self, d: int, heads: int, past: int, future: int, dropout: float):
        super().__init__()
        self.heads, self.past, self.future = heads, past, future
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.rel_bias = nn.Parameter(torch.zeros(heads, past + future + 1))
        self.dropout = dropout

    def mask(self, T: int, device) -> torch.Tensor:
        """Additive attention bias [H, T, T]: the learned bias inside the band, -inf outside."""
        i = torch.arange(T, device=device)
        off = i[None, :] - i[:, None]  # key - query
        inside = (off >= -self.past) & (off <= self.future)
        bias = self.rel_bias[:, (off + self.past).clamp(0, self.past + self.future)]
        return bias.masked_fill(~inside, float("-inf"))

    def forward(self, x):
        """x [B, T, d] -> [B, T, d]."""
        B, T, d = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask(T, x.device)[None],
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(B, T, d))


class Block(nn.Module):
    def __init__(self, cfg: A2EConfig):
        super().__init__()
        d = cfg.d_model
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = BandAttention(d, cfg.n_heads, cfg.past, cfg.future, cfg.dropout)
        self.ff = nn.Sequential(nn.Linear(d, cfg.ffn), nn.GELU(), nn.Linear(cfg.ffn, d))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.ff(self.norm2(x)))


class A2EModel(nn.Module):
    """Audio features + emotion + intensity -> normalised FLAME expression/jaw/neck.

    Buffers hold the normalisation learnt from the training set: feat_mean/std
    [D], out_mean/std [E + 6].
    """

    def __init__(self, cfg: A2EConfig):
        super().__init__()
        self.cfg = cfg
        fc, d = cfg.features, cfg.d_model
        self.register_buffer("feat_mean", torch.zeros(cfg.feat_dim))
        self.register_buffer("feat_std", torch.ones(cfg.feat_dim))
        self.register_buffer("out_mean", torch.zeros(cfg.n_out))
        self.register_buffer("out_std", torch.ones(cfg.n_out))
        width = cfg.squeeze or cfg.feat_dim
        self.squeeze = nn.Linear(cfg.feat_dim, cfg.squeeze) if cfg.squeeze else None
        self.audio_in = nn.Sequential(nn.Linear(fc.window * width, d), nn.GELU(), nn.Linear(d, d))
        self.emotion_in = nn.Linear(len(EMOTIONS), d, bias=False)
        self.emotion_out = nn.Linear(len(EMOTIONS), cfg.n_out, bias=False)
        nn.init.zeros_(self.emotion_out.weight)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.n_out)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, seq, weights, intensity):
        """Normalised outputs for every frame a feature sequence covers.

        seq [B, (T + 2C) * sub, D] raw features (AudioFeaturizer), weights
        [B, T, 8], intensity [B, T] -> y [B, T, E + 6] in normalised units
        (`denormalize` turns them into parameters).
        """
        fc = self.cfg.features
        x = (seq - self.feat_mean) / self.feat_std
        if self.squeeze is not None:
            x = self.squeeze(x)
        x = frame_windows(x, fc.sub, fc.context)
        cond = emotion_condition(weights, intensity)
        h = self.audio_in(x) + self.emotion_in(cond)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h)) + self.emotion_out(cond)

    def denormalize(self, y):
        """y [..., E + 6] normalised -> parameters [..., E + 6] (expr, jaw, neck)."""
        return y * self.out_std + self.out_mean

    def normalize(self, params):
        return (params - self.out_mean) / self.out_std

    @torch.inference_mode()
    def predict(self, seq, weights, intensity, chunk: int = 512) -> torch.Tensor:
        """Parameters for a whole clip, in chunks of `chunk` frames: bounded memory, same result.

        seq [(T + 2C) * sub, D], weights [T, 8], intensity [T] -> params [T, E + 6].
        Each chunk is run with the halo of frames the band attention can reach,
        so its outputs equal those of one pass over the whole clip. The model
        must be in eval mode (as `load` returns it): dropout would break that.
        """
        if self.training:
            raise RuntimeError("A2EModel.predict needs eval mode; call model.eval() first")
        fc = self.cfg.features
        T = weights.shape[0]
        before, after = self.cfg.halo
        outs = []
        for a in range(0, T, chunk):
            b = min(T, a + chunk)
            lo, hi = max(0, a - before), min(T, b + after)
            part = seq[lo * fc.sub : (hi + 2 * fc.context) * fc.sub]
            y = self(part[None], weights[None, lo:hi], intensity[None, lo:hi])[0]
            outs.append(y[a - lo : b - lo])
        return self.denormalize(torch.cat(outs, 0))

    # -- bundle I/O ---------------------------------------------------------

    def save(self, path: str | os.PathLike, extra: dict | None = None) -> None:
        """Weights + config (+ `extra`, e.g. fps and metrics) in one safetensors file, atomically."""
        meta = {"format": FORMAT, "config": self.cfg.to_dict(), "emotions": list(EMOTIONS)}
        meta.update(extra or {})
        save_tensors(path, self.state_dict(), meta)

    @classmethod
    def load(cls, path: str | os.PathLike, device="cpu") -> tuple["A2EModel", dict]:
        """(model in eval mode, metadata); InputError when the file is not an A2E model."""
        return load_stage_model(path, FORMAT, "A2E", lambda config: cls(A2EConfig.from_dict(config)), device)


def split_params(params):
    """params [..., E + 6] -> (expr [..., E], jaw [..., 3], neck [..., 3])."""
    return params[..., :-6], params[..., -6:-3], params[..., -3:]


def lip_indices(flame_model, path=None) -> np.ndarray:
    """The rig's lip vertex indices, for the lip loss and metric.

    Uses the `lips` region, else `mouth`. A real FLAME file converted without
    regions has neither: rather than guess, we ask for one (FLAME's own
    FLAME_masks.pkl has a `lips` mask; store it as `region.lips` in the npz).
    """
    for name in ("lips", "mouth"):
        idx = flame_model.regions.get(name)
        if idx is not None and len(idx) > 0:
            return np.asarray(idx, dtype=np.int64)
    raise InputError(path, "the rig has no `lips` (or `mouth`) vertex region, which the A2E lip loss needs; "
                     "add the lip vertex indices to flame_model.npz as `region.lips`")


def load_a2e(avatar, device="cpu") -> tuple[A2EModel, dict]:
    """The A2E model of an avatar bundle (folder or AvatarBundle) and its metadata (fps, metrics, ...)."""
    from emotalker.core.models.bundle import AvatarBundle

    bundle = avatar if isinstance(avatar, AvatarBundle) else AvatarBundle.open(avatar)
    return A2EModel.load(bundle.require_stage("a2e"), device=device)


def infer_curves(model: A2EModel, samples: np.ndarray, weights, intensity, fps: float, device="cpu") -> dict:
    """Per-frame FLAME curves for 16 kHz mono `samples` [N].

    weights: [8] or per frame [T, 8] over EMOTIONS; intensity: a number or per
    frame [T] in [0, 3]; T = round(duration * fps). Returns numpy arrays
    expr [T, E], jaw [T, 3], neck [T, 3], emotion_weights [T, 8], intensity [T].
    """
    from emotalker.core.audio.waveform import duration_frames
    from emotalker.core.audio.features import AudioFeaturizer

    T = duration_frames(len(samples), fps, model.cfg.features.sample_rate)
    w = np.asarray(weights, np.float32)
    w = np.broadcast_to(w, (T, len(EMOTIONS))) if w.ndim == 1 else w
    s = np.asarray(intensity, np.float32)
    s = np.broadcast_to(s, (T,)) if s.ndim == 0 else s
    if w.shape != (T, len(EMOTIONS)) or s.shape != (T,):
        raise InputError(None, f"emotion weights {list(w.shape)} and intensity {list(s.shape)} must cover the audio's {T} frames")
    check_intensity(s)
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(device)  # noqa: E731
    with single_threaded():  # the same curves whatever the thread count (threads.py)
        seq = AudioFeaturizer(model.cfg.features)(samples, fps, T)
        expr, jaw, neck = (x.cpu().numpy() for x in split_params(model.predict(t(seq), t(w), t(s))))
    return {"expr": expr, "jaw": jaw, "neck": neck, "emotion_weights": np.array(w), "intensity": np.array(s)}
