"""Stage 2: the spatial-audio-emotion attention that predicts per-Gaussian offsets.

On top of Stage 1 (the neutral state space, GaussianBlendshapes) this network
predicts, for every face Gaussian n of a frame, offsets of rotation, log-scale,
colour (SH DC) and opacity logit, as in GaussianEmoTalker:

    q_n   = W_q [ f(dM_n) || PE(blink) || c || z_n ]            the query
    z^l   = z^{l-1} + CrossAttn(z^{l-1}; a, f_e, f_s)            l = 1..L
    z^l   = z^l + FFN(z^l)
    (dr, ds, dc, da) = g(s) * (Head(z^L) + sum_e w_e O_e,n)

- dM_n, the mesh cue: the displacement of the Gaussian's bound surface point
  between the frame's mesh (expression, jaw, eyes, eyelids; neck, global pose
  and translation left out so head motion does not leak in) and the neutral
  rest mesh. The paper takes M_neu from A2E run with the neutral label; the
  rest mesh makes the cue available for any frame, tracked or baked, without
  a second A2E pass, and the emotion itself reaches the network through the
  emotion and intensity tokens.
- PE(blink): sinusoidal encoding of the blink value (the paper's AU45).
- c, the camera code: the unit direction from the head (FLAME origin) to the
  camera centre, minus its training mean, so any render camera is described.
- z_n, the null token: all zeros at the start, as in the paper, but a learned
  per-Gaussian code (an all-zero vector that stayed zero would be a no-op
  through W_q); `use_null=False` masks it out for the paper's ablation while
  keeping the same layers and parameter count.
- Tokens: a (the frame's audio window through a small MLP), f_e (the emotion
  token: the weight-mixed rows of an emotion table, so a mix is first-class
  and a one-hot mix is the plain emotion exactly) and f_s (the intensity
  token: the table rows for levels 0..3 interpolated linearly, so any value in
  [0, 3] has an embedding). The tables are learned (default) or learned
  projections of cached CLIP text embeddings (`text_embed`), stored in the
  file either way so that inference never needs CLIP.
- O_e,n, the static offsets (not in the paper): each emotion's own offsets of
  each Gaussian, mixed by the emotion weights w. The network draws every
  Gaussian's emotional look from a code of 8 numbers through layers shared by
  all Gaussians; a fixed per-emotion pattern, a furrow or a flush that differs
  from Gaussian to Gaussian, is fitted far faster by a table of its own (on the
  default sample's 30-minute avatar: +0.76 dB held-out from the table alone in
  2,000 steps against +0.53 from the network; docs/stage2.md). The network
  keeps what changes from frame to frame. `static_offsets=False` leaves them
  out, as do files written before them.
- g(s) = s / 3: the offsets are scaled by the intensity, so intensity 0 gives
  exactly Stage 1 (the network is not even run), and the heads' last layer and
  the static offsets are zero-initialised so that training starts exactly at Stage 1.

Offsets apply as: quaternion q1 * (1 + dr) (a turn in the Gaussian's own
frame, independent of the head pose), log-scale + ds, SH DC + dc, opacity
logit + da. Teeth Gaussians get no offsets.

Speed: the tokens are shared by all Gaussians of a frame, so each attention
layer is folded per frame into two small matrices (scores S = W_q^T K^T,
values U = V W_o^T): a Gaussian costs two GEMMs of width heads x tokens per
layer instead of four d x d ones (`_fold`).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from emotalker.core.audio.features import FeatureConfig
from emotalker.core.base.emotions import EMOTIONS, MAX_INTENSITY, check_intensity, normalise_mix
from emotalker.core.models.bundle import load_stage_model
from emotalker.core.base.errors import InputError
from emotalker.core.rig.flame import FlameParams
from emotalker.core.render.gaussians import Gaussians

FORMAT = "emotalker-emotion/1"
N_LEVELS = 4  # intensity table rows for levels 0, 1, 2, 3
N_OFFSETS = 11  # rotation 4, log-scale 3, colour 3, opacity 1
N_TOKENS = 3  # audio, emotion, intensity
INTENSITY_TEXTS = tuple(f"level{i}" for i in range(N_LEVELS))


@dataclass(frozen=True)
class EmotionConfig:
    """Sizes of the Stage 2 network (GaussianTalker's are d_model 64, 2 heads, FFN 128;
    these defaults are chosen to evaluate 20k Gaussians at over 100 frames/s on a CPU)."""

    n_gaussians: int = 0
    """Stage 1's face Gaussians, one query each (training takes Stage 1's)."""
    audio_dim: int = 0
    """Width of one frame's audio window, (2C+1) * sub * feature dim (training takes the features')."""
    features: FeatureConfig = field(default_factory=FeatureConfig)
    """The audio features read (training takes the bundle's A2E ones, so both read the same)."""
    d_model: int = 32
    """Attention width."""
    n_heads: int = 2
    """Attention heads."""
    n_layers: int = 2
    """Attention layers."""
    ffn: int = 32
    """Hidden width of each layer's feed-forward block."""
    d_mesh: int = 16
    """Width of a Gaussian's mesh-motion cue."""
    d_null: int = 8
    """Width of each Gaussian's learned null code."""
    blink_freqs: int = 3
    """Sine/cosine frequencies encoding the blink value."""
    head_hidden: int = 16
    """Hidden width of the offset heads."""
    audio_hidden: int = 64
    """Hidden width of the audio encoder."""
    d_text: int = 0
    """Width of cached text embeddings (CLIP); 0 means learned tables (training sets it)."""
    mesh_scale: float = 100.0
    """dM is in metres; x100 gives centimetres, values about 0..1."""
    use_null: bool = True
    """Attend to the null token (off: the paper's 'w/o null vector' ablation)."""
    static_offsets: bool = True
    """Add each emotion's own learned per-Gaussian offsets to the network's (off: the paper's network alone)."""

    @property
    def d_query_in(self) -> int:
        return self.d_mesh + self.d_blink + 3 + self.d_null

    @property
    def d_blink(self) -> int:
        return 1 + 2 * self.blink_freqs

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = self.features.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EmotionConfig":
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        d.setdefault("static_offsets", False)  # files written before the static offsets have none
        d["features"] = FeatureConfig.from_dict(d.get("features", {}))
        return cls(**d)


@dataclass
class EmotionInputs:
    """One frame's conditioning. weights [8] over EMOTIONS (normalised here), intensity in
    [0, 3], blink in [0, 1], audio [audio_dim] (the frame's feature window), camera [3]
    (`camera_code`; None: the training mean)."""

    weights: torch.Tensor
    intensity: float
    blink: float = 0.0
    audio: torch.Tensor | None = None
    camera: torch.Tensor | None = None


# ---------------------------------------------------------------------------------- inputs


def blink_encoding(blink: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """Sinusoidal encoding of blink values [...] -> [..., 1 + 2 n_freqs]: b, sin(2^k pi b), cos(2^k pi b)."""
    b = blink[..., None]
    freqs = math.pi * 2.0 ** torch.arange(n_freqs, dtype=b.dtype, device=b.device)
    return torch.cat([b, torch.sin(b * freqs), torch.cos(b * freqs)], -1)


def camera_code(viewmat: np.ndarray | torch.Tensor, model: str = "pinhole") -> torch.Tensor:
    """Stage 2's camera code: world-to-camera viewmat [..., 4, 4] (numpy or torch) -> the unit direction
    [..., 3] (float32 torch, on the viewmat's device) from the FLAME origin to the camera. An orthographic
    camera (`model` "ortho") sees from infinitely far along its axis: the direction against its view."""
    viewmat = torch.as_tensor(viewmat, dtype=torch.float32)
    R, t = viewmat[..., :3, :3], viewmat[..., :3, 3]
    if model == "ortho":
        return F.normalize(-R[..., 2, :], dim=-1)
    centre = -(R.transpose(-1, -2) @ t[..., None])[..., 0]
    return F.normalize(centre, dim=-1)


def mesh_cue(stage1, params: FlameParams) -> torch.Tensor:
    """dM [B, N, 3]: each face Gaussian's bound surface point on the frame's mesh (expression,
    jaw, eyes, eyelids; no neck, global pose or translation) minus the same point on the rest mesh.

    stage1: a GaussianBlendshapes; params: FlameParams with fields [B, ...].
    """
    from emotalker.core.rig.binding import interpolate_batched

    rig = stage1.rig()
    local = FlameParams(shape=params.shape, expr=params.expr, jaw=params.jaw, eyes=params.eyes, eyelids=params.eyelids)
    B = local.batch_size()
    verts, _ = rig(local)
    rest = rig.shaped(FlameParams(shape=params.shape), B) if params.shape is not None else rig.v_template[None]
    return interpolate_batched(verts - rest, rig.faces, stage1.face_ids, stage1.bary)


# ---------------------------------------------------------------------------------- network


class CrossAttentionLayer(nn.Module):
    """Query (one a Gaussian) attends to the frame's tokens; then a feed-forward layer; both residual."""

    def __init__(self, d: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ff1, self.ff2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def fold(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-frame matrices of this layer's attention for tokens [T, d]:
        S [d, H*T], s0 [H*T] (scores = z S + s0) and U [H*T, d], u0 [d] (out = softmax(scores) U + u0).
        """
        T, d = tokens.shape
        H, dh = self.heads, d // self.heads
        k = self.k(tokens).reshape(T, H, dh).transpose(0, 1)  # [H,T,dh]
        v = self.v(tokens).reshape(T, H, dh).transpose(0, 1)
        scale = 1.0 / math.sqrt(dh)
        Wq = self.q.weight.reshape(H, dh, d)  # rows of q_h
        S = torch.einsum("hed,hte->dht", Wq, k).reshape(d, H * T) * scale
        s0 = torch.einsum("he,hte->ht", self.q.bias.reshape(H, dh), k).reshape(H * T) * scale
        Wo = self.o.weight.reshape(d, H, dh)  # columns of head h
        U = torch.einsum("hte,dhe->htd", v, Wo).reshape(H * T, d)
        return S, s0, U, self.o.bias

    def forward(self, z: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """z [N, d], tokens [T, d] -> [N, d]."""
        S, s0, U, u0 = self.fold(tokens)
        N = z.shape[0]
        T = tokens.shape[0]
        p = torch.softmax(torch.addmm(s0, z, S).reshape(N, self.heads, T), -1).reshape(N, -1)
        z = z + torch.addmm(u0, p, U)
        return z + self.ff2(torch.relu(self.ff1(z)))


class EmotionDeformer(nn.Module):
    """The Stage 2 network. `offsets(dM, inputs)` -> per-Gaussian offsets [N, 11]."""

    def __init__(self, cfg: EmotionConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        if d % cfg.n_heads:
            raise ValueError(f"d_model {d} is not a multiple of n_heads {cfg.n_heads}")
        self.register_buffer("feat_mean", torch.zeros(cfg.audio_dim))
        self.register_buffer("feat_std", torch.ones(cfg.audio_dim))
        self.register_buffer("camera_mean", torch.zeros(3))
        self.mesh_in = nn.Linear(3, cfg.d_mesh)
        self.query_in = nn.Linear(cfg.d_query_in, d)
        self.null = nn.Parameter(torch.zeros(cfg.n_gaussians, cfg.d_null))
        if cfg.static_offsets:
            self.static = nn.Parameter(torch.zeros(len(EMOTIONS), cfg.n_gaussians, N_OFFSETS))
        self.audio_in = nn.Sequential(nn.Linear(cfg.audio_dim, cfg.audio_hidden), nn.ReLU(), nn.Linear(cfg.audio_hidden, d))
        if cfg.d_text:
            # Cached text embeddings (CLIP) with learned projections: inference needs no text encoder.
            self.register_buffer("emotion_text", torch.zeros(len(EMOTIONS), cfg.d_text))
            self.register_buffer("intensity_text", torch.zeros(N_LEVELS, cfg.d_text))
            self.emotion_proj, self.intensity_proj = nn.Linear(cfg.d_text, d), nn.Linear(cfg.d_text, d)
        else:
            self.emotion_table = nn.Parameter(torch.randn(len(EMOTIONS), d))
            self.intensity_table = nn.Parameter(torch.randn(N_LEVELS, d))
        self.layers = nn.ModuleList(CrossAttentionLayer(d, cfg.n_heads, cfg.ffn) for _ in range(cfg.n_layers))
        self.head = nn.Sequential(nn.Linear(d, cfg.head_hidden), nn.ReLU(), nn.Linear(cfg.head_hidden, N_OFFSETS))
        nn.init.zeros_(self.head[2].weight)  # Stage 2 starts exactly at Stage 1
        nn.init.zeros_(self.head[2].bias)

    # -- tokens ---------------------------------------------------------------------------

    def emotion_rows(self) -> torch.Tensor:
        """The emotion table [8, d]."""
        return self.emotion_proj(self.emotion_text) if self.cfg.d_text else self.emotion_table

    def intensity_rows(self) -> torch.Tensor:
        """The intensity table [4, d] for levels 0..3."""
        return self.intensity_proj(self.intensity_text) if self.cfg.d_text else self.intensity_table

    def intensity_token(self, intensity: float) -> torch.Tensor:
        """[d]: the table rows of the two levels around `intensity`, interpolated linearly."""
        rows = self.intensity_rows()
        lo = min(int(math.floor(intensity)), N_LEVELS - 2)
        t = intensity - lo
        return rows[lo] * (1 - t) + rows[lo + 1] * t

    def tokens(self, inputs: EmotionInputs) -> torch.Tensor:
        """The frame's key/value tokens [3, d]: audio, emotion, intensity."""
        dev = self.feat_mean.device
        audio = inputs.audio
        if audio is None:
            audio = self.feat_mean  # the average frame: normalises to zero
        audio = audio.to(dev).reshape(-1)
        if audio.shape[0] != self.cfg.audio_dim:
            raise InputError(None, f"audio window has {audio.shape[0]} values, the emotion model expects {self.cfg.audio_dim}")
        audio = (audio - self.feat_mean) / self.feat_std
        a = self.audio_in(audio)
        e = self.mix(inputs) @ self.emotion_rows()
        s = self.intensity_token(check_intensity(inputs.intensity))
        return torch.stack([a, e, s])

    def mix(self, inputs: EmotionInputs) -> torch.Tensor:
        """The frame's emotion weights [8], normalised to sum 1 (all zero: neutral)."""
        return normalise_mix(torch.as_tensor(inputs.weights, dtype=torch.float32)).to(self.feat_mean.device)

    def static_mix(self, inputs: EmotionInputs) -> torch.Tensor:
        """The static offsets of the frame's emotion mix [N, 11], before the intensity gate."""
        return (self.mix(inputs) @ self.static.flatten(1)).view(-1, N_OFFSETS)

    def frame_query(self, inputs: EmotionInputs) -> torch.Tensor:
        """The per-frame part of the query input: [PE(blink) || camera] [d_blink + 3]."""
        dev = self.feat_mean.device
        blink = blink_encoding(torch.tensor(float(inputs.blink), device=dev), self.cfg.blink_freqs)
        cam = self.camera_mean if inputs.camera is None else inputs.camera.to(dev).reshape(3)
        return torch.cat([blink, cam - self.camera_mean])

    # -- offsets --------------------------------------------------------------------------

    def offsets(self, dM: torch.Tensor, inputs: EmotionInputs) -> torch.Tensor:
        """dM [N, 3] (metres) -> offsets [N, 11] (rotation 4, log-scale 3, colour 3, opacity 1),
        scaled by intensity / 3; exactly zero at intensity 0.

        Under torch.no_grad / inference_mode this runs `_fast_offsets` (the same arithmetic,
        in place and with biases folded), else the plain differentiable form.
        """
        cfg = self.cfg
        s = check_intensity(inputs.intensity)
        N = dM.shape[0]
        if N != cfg.n_gaussians:
            raise InputError(None, f"the emotion model was trained for {cfg.n_gaussians} Gaussians, the neutral model has {N}")
        if s == 0.0:
            return dM.new_zeros(N, N_OFFSETS)
        tokens = self.tokens(inputs)
        frame_q = self.frame_query(inputs)
        if not torch.is_grad_enabled():
            out = self._fast_offsets(dM, tokens, frame_q, s / MAX_INTENSITY)
            return out.add_(self.static_mix(inputs), alpha=s / MAX_INTENSITY) if cfg.static_offsets else out
        # W_q [f(dM) || PE(blink) || c || z] split into its per-Gaussian and per-frame columns.
        W = self.query_in.weight
        dm, df = cfg.d_mesh, cfg.d_blink + 3
        frame_bias = self.query_in.bias + W[:, dm: dm + df] @ frame_q
        f = torch.relu(self.mesh_in(dM * cfg.mesh_scale))
        z = torch.addmm(frame_bias, f, W[:, :dm].T)
        if cfg.use_null:
            z = z + self.null @ W[:, dm + df:].T
        for layer in self.layers:
            z = layer(z, tokens)
        out = self.head(z)
        if cfg.static_offsets:
            out = out + self.static_mix(inputs)
        return out * (s / MAX_INTENSITY)

    def _fast_offsets(self, dM: torch.Tensor, tokens: torch.Tensor, frame_q: torch.Tensor, gate: float) -> torch.Tensor:
        """`offsets` without autograd, in few passes over memory (20k Gaussians is a few MB a pass).

        z is kept as z_stored + c with a pending per-frame vector c, so that no pass adds a bias
        to [N, d]: every consumer of z takes c into its own bias (x W^T + b = z_s W^T + (b + c W^T)).
        Biases are not added by GEMMs either (addmm spends a whole pass broadcasting the bias):
        - before a ReLU, relu(x + b) = max(x, -b) + b, and the + b joins the pending vector;
        - in the attention, softmax over each head's tokens of x + b is e_t w_t / sum_t' e_t' w_t'
          with e = exp(x) and w = exp(b - max b) <= 1, so w scales the block-ones normaliser
          and the values U instead of the [N, H*T] scores.
        """
        cfg = self.cfg
        W = self.query_in.weight
        dm, df = cfg.d_mesh, cfg.d_blink + 3
        ct = lambda m: m.T.contiguous()  # noqa: E731 - MKL is slowest on strided operands

        def relu_shifted(x, w, b):  # relu(x w + b) - b, in place of the GEMM's output
            y = torch.mm(x, w)
            return torch.maximum(y, -b, out=y)

        Wz = ct(W[:, :dm])
        f = relu_shifted(dM, ct(self.mesh_in.weight * cfg.mesh_scale), self.mesh_in.bias)
        z = torch.mm(f, Wz)
        if cfg.use_null:
            z.addmm_(self.null, ct(W[:, dm + df:]))
        c = self.query_in.bias + W[:, dm: dm + df] @ frame_q + self.mesh_in.bias @ Wz  # pending [d]
        H, T = cfg.n_heads, tokens.shape[0]
        block = torch.block_diag(*[torch.ones(T, T, device=z.device)] * H)
        for layer in self.layers:
            S, s0, U, u0 = layer.fold(tokens)
            b = (s0 + c @ S).reshape(H, T)
            w = torch.exp(b - b.max(-1, keepdim=True).values).reshape(H * T, 1)
            e = torch.mm(z, S.contiguous()).clamp_max_(60.0).exp_()
            e.div_(e @ (w * block))
            z.addmm_(e, w * U)
            c = c + u0
            b1 = layer.ff1.bias + c @ layer.ff1.weight.T
            F2 = ct(layer.ff2.weight)
            z.addmm_(relu_shifted(z, ct(layer.ff1.weight), b1), F2)
            c = c + layer.ff2.bias + b1 @ F2
        l1, l2 = self.head[0], self.head[2]
        b1 = l1.bias + c @ l1.weight.T
        W2 = ct(l2.weight) * gate
        return torch.mm(relu_shifted(z, ct(l1.weight), b1), W2).add_(l2.bias * gate + b1 @ W2)

    # -- files ----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, extra: dict | None = None) -> None:
        """Weights, normalisation and the cached emotion/intensity embeddings, with the config, atomically."""
        from emotalker.core.base.fileio import save_tensors

        meta = {"format": FORMAT, "config": self.cfg.to_dict(), "emotions": list(EMOTIONS),
                "intensity_levels": list(range(N_LEVELS)), "encoder": "text" if self.cfg.d_text else "table"}
        meta.update(extra or {})
        save_tensors(path, self.state_dict(), meta)

    @classmethod
    def load(cls, path: str | os.PathLike, device="cpu") -> tuple["EmotionDeformer", dict]:
        """(model in eval mode, metadata); InputError naming the file when it is not a Stage 2 model."""
        return load_stage_model(path, FORMAT, "emotion", lambda config: cls(EmotionConfig.from_dict(config)), device)

    def without_null(self) -> "EmotionDeformer":
        """The same weights with the null token masked out (the `--no-null-token` ablation at run time)."""
        other = EmotionDeformer(replace(self.cfg, use_null=False)).to(self.feat_mean.device)
        other.load_state_dict(self.state_dict())
        return other.eval()


# ---------------------------------------------------------------------------------- frames


def apply_offsets(g: Gaussians, offsets: torch.Tensor) -> Gaussians:
    """Stage 1 Gaussians g (face first, then teeth) + offsets [N_face, 11] -> new Gaussians.

    quaternion q * (1 + dr) (a turn in the Gaussian's own frame), log-scale + ds,
    SH DC + dc, opacity logit + da; Gaussians past N_face (teeth) unchanged.
    """
    from emotalker.core.base.quaternion import quat_multiply

    n = offsets.shape[0]
    dq = offsets[:, :4] + offsets.new_tensor([1.0, 0.0, 0.0, 0.0])
    quats = torch.cat([quat_multiply(g.quats[:n], dq), g.quats[n:]])
    log_scales = torch.cat([g.log_scales[:n] + offsets[:, 4:7], g.log_scales[n:]])
    dc = torch.cat([g.sh[:n, :1] + offsets[:, None, 7:10], g.sh[n:, :1]])
    sh = torch.cat([dc, g.sh[:, 1:]], 1)
    opacity = torch.cat([g.opacity_logits[:n] + offsets[:, 10], g.opacity_logits[n:]])
    return Gaussians(g.means, quats, log_scales, opacity, sh)


def apply_offsets_in_place(batch, b: int, offsets: torch.Tensor) -> None:
    """`apply_offsets` on frame b of a blendshapes.FrameBatch [B, N_face + M, ...], written into it (no autograd).

    Under torch.inference_mode on the CPU this is one compiled pass (inference_kernels.apply_emotion_offsets);
    elsewhere `apply_offsets` itself, copied back.
    """
    from emotalker.core.base import inference_kernels as kernels

    frame = (batch.quats[b], batch.log_scales[b], batch.opacity_logits[b], batch.sh[b])
    if kernels.applicable(offsets, *frame) and all(t.is_contiguous() for t in frame):
        kernels.run_parallel(kernels.apply_emotion_offsets, offsets.contiguous().numpy(), *(t.numpy() for t in frame))
        return
    g = apply_offsets(Gaussians(batch.means[b], *frame), offsets)
    for old, new in zip(frame, (g.quats, g.log_scales, g.opacity_logits, g.sh)):
        old.copy_(new)
