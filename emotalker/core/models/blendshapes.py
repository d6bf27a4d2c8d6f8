"""Stage 1: FLAME-bound Gaussian blendshapes (GaussianBlendshapes), the neutral state space.

A neutral set of N Gaussians sampled on the FLAME mesh, each bound to a
triangle (id + barycentrics) with LBS weights interpolated from its vertices,
plus K expression blendshapes that carry a delta for every attribute.
Upper and lower teeth are two small plain sets on billboards, rigid with the
head (neck joint) and the jaw.

Evaluating a frame (`forward`), for face Gaussian n on triangle f:

    offset  o = (I + G_f(psi)) (x0_n - s0_n) + sum_k psi_k m_nk dx_nk
    mean      = s_n(posed mesh) + L_n o
    rotation  = q_n(pose) * r_f(psi) * (q0_n + sum_k psi_k m_nk dq_nk)
    log-scale, opacity logit, SH = base + sum_k psi_k m_nk delta_nk

s0_n / s_n are the bound surface point on the template / the fully deformed
FLAME mesh (expression, eyelids, pose correctives, LBS), so a Gaussian that
sits on the surface stays exactly on it for any expression and pose.
G_f(psi) = sum_k psi_k (Q_fk - I) and r_f(psi) = normalise(1 + sum_k psi_k
(quat(R_fk) - 1)) come from deformation transfer (Q_fk: the affine map of
triangle f under expression k, R_fk its polar rotation): they are the fixed
initial deltas of the paper, applied to the Gaussian's current offset from
the surface. L_n = sum_j w_nj A_j[:3,:3] is the blended skinning matrix and
q_n(pose) the normalised blend of the joint rotations. Band-1 SH turn with
q_n(pose); higher bands are left unrotated (the CPU default is degree 1).

Why offsets from the surface point rather than plain LBS of x: blending the
skinning weights over a triangle is not linear with blending its vertices, so
plain LBS of a bound point drifts off a jaw-straddling triangle by ~0.1 mm.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from emotalker.core.rig.binding import interpolate, interpolate_batched, poisson_disk_surface
from emotalker.core.rig.deformation_transfer import deformation_gradients, rotation_quats
from emotalker.core.rig.flame import FlameModel, FlameParams, FlameRig
from emotalker.core.render.gaussians import Gaussians
from emotalker.core.base.quaternion import matrix_to_quat, quat_multiply, quat_to_matrix

SH_C0 = 0.28209479177387814
FORMAT = "emotalker-neutral/1"
NECK_JOINT, JAW_JOINT = 1, 2

# Tensors with one row per face Gaussian: densify and prune gather all of them together.
GAUSSIAN_PARAMS = ("means", "quats", "log_scales", "opacity_logits", "sh_dc", "sh_rest",
                   "d_means", "d_quats", "d_log_scales", "d_opacity", "d_sh")
GAUSSIAN_BUFFERS = ("face_ids", "bary", "lbs_weights", "masks")
DELTA_NAMES = ("d_means", "d_quats", "d_log_scales", "d_opacity", "d_sh")
TEETH_PARAMS = ("teeth_means", "teeth_quats", "teeth_log_scales", "teeth_opacity_logits", "teeth_sh_dc", "teeth_sh_rest")


@dataclass
class BlendshapeConfig:
    """Sizes and initial values of a Gaussian blendshape avatar."""

    n_gaussians: int = 10000
    """Face Gaussians sampled on the mesh at the start (densification adds more)."""
    n_blendshapes: int = 50
    """Blendshapes K (the rig's first K expression components)."""
    sh_degree: Literal[0, 1, 2, 3] = 1
    """Highest SH degree (1 on CPU: degree 2 would multiply the SH memory by 2.25 for little gain on a
    frontal talking head)."""
    sh_delta_degree: int = 0
    """SH bands that carry per-blendshape deltas. 0 (DC only) keeps expression-dependent shading while
    saving 9 x K floats a Gaussian (450 at K = 50), about 40% of the delta memory and optimiser time."""
    n_teeth: int = 300
    """Gaussians on each of the two teeth rows."""
    teeth_width: float = 0.048
    """Width of a teeth row, metres."""
    teeth_height: float = 0.009
    """Height of a teeth row, metres."""
    teeth_arch_radius: float = 0.03
    """Radius of the dental arch, metres."""
    mask_falloff: float = 0.05
    """A Gaussian's mask for blendshape k is min(1, d / (falloff * max d)), d the displacement of its
    surface point under expression k."""
    init_opacity: float = 0.1
    """Opacity of every Gaussian at the start."""
    seed: int = 0
    """Seed of the initial sampling on the mesh."""


def _inv_sigmoid(p: float) -> float:
    return math.log(p / (1 - p))


def _nn_log_scales(points: np.ndarray, k: int = 3) -> np.ndarray:
    """Isotropic log-scales [N,3] from the mean distance to the k nearest neighbours (3DGS)."""
    from scipy.spatial import cKDTree

    k = min(k, len(points) - 1)
    if k < 1:
        return np.full((len(points), 3), math.log(1e-3), np.float32)
    d, _ = cKDTree(points).query(points, k=k + 1)
    mean = np.maximum(d[:, 1:].mean(1), 1e-5)
    return np.repeat(np.log(mean)[:, None], 3, 1).astype(np.float32)


def rotate_sh_band1(sh: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Turn the degree-1 SH bands with rotations R.

    sh [..., K, 3] (K >= 4), R [..., 3, 3] -> sh with bands 1..3 rotated. 3DGS's
    band-1 basis is C1 (-y, z, -x) = C1 P d, so a colour c^T P d seen after
    rotating by R needs c' = P R P^T c.
    """
    # P is a signed permutation, so P R P^T just reorders R's entries and flips signs.
    perm = [1, 2, 0]
    sign = torch.tensor([-1.0, 1.0, -1.0], dtype=sh.dtype, device=sh.device)
    M = R[..., perm, :][..., :, perm] * (sign[:, None] * sign[None, :])
    band1 = M @ sh[..., 1:4, :]
    return torch.cat([sh[..., :1, :], band1, sh[..., 4:, :]], -2)


def _joint_quats(A: torch.Tensor) -> torch.Tensor:
    """A [B,J,4,4] -> the joint rotations as quaternions [B,J,4], all in the root's hemisphere
    (so that blending them by skinning weights does not cancel a rotation against its negative)."""
    qj = matrix_to_quat(A[:, :, :3, :3])
    return torch.where((qj * qj[:, :1]).sum(-1, keepdim=True) < 0, -qj, qj)


def _masked(delta: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """m_nk * delta_nk: delta [N,*D,K] times masks [N,K]."""
    return delta * masks.reshape(masks.shape[0], *([1] * (delta.ndim - 2)), masks.shape[1])


def _version_key(tensors: list[torch.Tensor]) -> tuple:
    """What a cache built from `tensors` depends on: each one's identity, in-place version and shape."""
    return tuple((id(t), t._version, tuple(t.shape)) for t in tensors)


def _mouth_points(model: FlameModel) -> tuple[np.ndarray, str]:
    """Vertices [M,3] that locate the mouth and which source they came from.

    `teeth` or `mouth_interior` regions when the rig has them, else `lips`;
    a rig without regions falls back to the vertices split between the head
    and the jaw (jaw weight 0.3-0.7) in the front half of the head: the lips.
    """
    for name in ("teeth", "mouth_interior", "lips"):
        idx = model.regions.get(name)
        if idx is not None and len(idx) >= 3:
            return model.v_template[idx], name
    jaw = model.weights[:, JAW_JOINT] if model.n_joints > JAW_JOINT else np.zeros(model.n_verts)
    z = model.v_template[:, 2]
    sel = (jaw > 0.3) & (jaw < 0.7) & (z > np.median(z))
    if sel.sum() < 3:
        sel = z >= np.quantile(z, 0.99)
    return model.v_template[sel], "jaw-weight boundary"


def teeth_billboards(model: FlameModel, cfg: BlendshapeConfig) -> dict[str, np.ndarray]:
    """Upper and lower teeth: Poisson-disk points on two arched billboards behind the lips.

    Returns means [2M,3], rows [2M] (0 upper, 1 lower) and the containment
    cylinder (cx, cz, r_in, r_out, y_lo, y_hi) for each row [2,6].
    """
    pts, source = _mouth_points(model)
    centre = pts.mean(0)
    front = pts[:, 2].max()
    # Lips: the incisors sit about 8 mm behind the front of the lips.
    z_front = front - (0.008 if source in ("lips", "jaw-weight boundary") else 0.0)
    R = cfg.teeth_arch_radius
    half = min(cfg.teeth_width / 2, 0.95 * R)
    theta_max = math.asin(half / R)
    cx, cz = centre[0], z_front - R  # the arch's axis, a vertical line
    nu, nv = 24, 6
    th = np.linspace(-theta_max, theta_max, nu)
    means, rows, cyl = [], [], []
    for row, (y_lo, y_hi) in enumerate([(centre[1] + 0.0005, centre[1] + 0.0005 + cfg.teeth_height),
                                        (centre[1] - 0.0005 - cfg.teeth_height, centre[1] - 0.0005)]):
        ys = np.linspace(y_lo, y_hi, nv)
        T, Y = np.meshgrid(th, ys, indexing="ij")
        grid = np.stack([cx + R * np.sin(T), Y, cz + R * np.cos(T)], -1).reshape(-1, 3)
        ij = np.arange(nu * nv).reshape(nu, nv)
        a, b, c, d = ij[:-1, :-1].ravel(), ij[1:, :-1].ravel(), ij[1:, 1:].ravel(), ij[:-1, 1:].ravel()
        faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
        fid, bary = poisson_disk_surface(grid, faces, cfg.n_teeth, seed=cfg.seed + 17 + row)
        means.append(interpolate(grid, faces, fid, bary))
        rows.append(np.full(cfg.n_teeth, row))
        cyl.append([cx, cz, R - 0.004, R + 0.002, y_lo - 0.002, y_hi + 0.002])
    return {"means": np.concatenate(means).astype(np.float32), "rows": np.concatenate(rows),
            "cylinder": np.array(cyl, np.float32), "source": source}


class GaussianBlendshapes(nn.Module):
    """The Stage 1 model. Build with `initialize(flame_model, config)` or `load(path, flame_model)`.

    Face Gaussians (N): means [N,3], quats [N,4], log_scales [N,3],
    opacity_logits [N], sh_dc [N,1,3], sh_rest [N,C-1,3]; deltas d_means [N,3,K], d_quats [N,4,K],
    d_log_scales [N,3,K], d_opacity [N,K], d_sh [N,Cd,3,K]; binding face_ids [N],
    bary [N,3], lbs_weights [N,J], masks [N,K]. Teeth (M): teeth_* attributes,
    teeth_joint [M], teeth_cylinder [M,6].
    """

    def __init__(self, flame_model: FlameModel, config: BlendshapeConfig, n: int, n_teeth_total: int):
        super().__init__()
        self.flame_model = flame_model
        self.config = config
        K, J = config.n_blendshapes, flame_model.n_joints
        C, Cd = (config.sh_degree + 1) ** 2, (config.sh_delta_degree + 1) ** 2
        z = lambda *s: nn.Parameter(torch.zeros(*s))  # noqa: E731
        self.means, self.quats, self.log_scales, self.opacity_logits = z(n, 3), z(n, 4), z(n, 3), z(n)
        self.sh_dc, self.sh_rest = z(n, 1, 3), z(n, C - 1, 3)  # split: they learn at different rates
        self.d_means, self.d_quats, self.d_log_scales = z(n, 3, K), z(n, 4, K), z(n, 3, K)
        self.d_opacity, self.d_sh = z(n, K), z(n, Cd, 3, K)
        self.register_buffer("face_ids", torch.zeros(n, dtype=torch.long))
        self.register_buffer("bary", torch.zeros(n, 3))
        self.register_buffer("lbs_weights", torch.zeros(n, J))
        self.register_buffer("masks", torch.zeros(n, K))
        M = n_teeth_total
        self.teeth_means, self.teeth_quats, self.teeth_log_scales = z(M, 3), z(M, 4), z(M, 3)
        self.teeth_opacity_logits, self.teeth_sh_dc, self.teeth_sh_rest = z(M), z(M, 1, 3), z(M, C - 1, 3)
        self.register_buffer("teeth_joint", torch.zeros(M, dtype=torch.long))
        self.register_buffer("teeth_cylinder", torch.zeros(M, 6))
        self.active_sh_degree = config.sh_degree
        self._rig: FlameRig | None = None
        self._face_deltas: tuple[torch.Tensor, torch.Tensor] | None = None
        self._delta_cache: tuple | None = None
        self._blend_cache: tuple | None = None

    # ------------------------------------------------------------------ building

    @classmethod
    def initialize(cls, flame_model: FlameModel, config: BlendshapeConfig | None = None) -> "GaussianBlendshapes":
        """Sample, bind and initialise a fresh model on `flame_model`'s template mesh."""
        cfg = config or BlendshapeConfig()
        if flame_model.n_expr < 1:
            raise ValueError("the FLAME rig has no expression components")
        K = min(cfg.n_blendshapes, flame_model.n_expr)
        cfg = BlendshapeConfig(**{**asdict(cfg), "n_blendshapes": K, "sh_delta_degree": min(cfg.sh_delta_degree, cfg.sh_degree)})
        verts, faces = flame_model.v_template.astype(np.float64), flame_model.faces
        face_ids, bary = poisson_disk_surface(verts, faces, cfg.n_gaussians, seed=cfg.seed)
        teeth = teeth_billboards(flame_model, cfg) if cfg.n_teeth > 0 else None
        n_teeth = 0 if teeth is None else len(teeth["means"])
        model = cls(flame_model, cfg, len(face_ids), n_teeth)
        x0 = interpolate(verts, faces, face_ids, bary)
        exprdirs = flame_model.shapedirs[:, :, flame_model.n_shape: flame_model.n_shape + K].astype(np.float64)
        disp = np.linalg.norm(interpolate(exprdirs, faces, face_ids, bary), axis=1)  # [N,K]
        masks = np.clip(disp / (cfg.mask_falloff * disp.max(0, keepdims=True) + 1e-12), 0, 1)
        if flame_model.albedo is not None:
            colour = np.clip(interpolate(flame_model.albedo.astype(np.float64), faces, face_ids, bary), 0, 1)
        else:
            colour = np.full((len(face_ids), 3), 0.5)
        with torch.no_grad():
            t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
            model.means.copy_(t(x0))
            model.quats[:, 0] = 1
            model.log_scales.copy_(t(_nn_log_scales(x0)))
            model.opacity_logits.fill_(_inv_sigmoid(cfg.init_opacity))
            model.sh_dc[:, 0] = t((colour - 0.5) / SH_C0)
            model.face_ids.copy_(torch.as_tensor(face_ids))
            model.bary.copy_(t(bary))
            model.lbs_weights.copy_(t(interpolate(flame_model.weights.astype(np.float64), faces, face_ids, bary)))
            model.masks.copy_(t(masks))
            if teeth is not None:
                model.teeth_means.copy_(t(teeth["means"]))
                model.teeth_quats[:, 0] = 1
                model.teeth_log_scales.copy_(t(_nn_log_scales(teeth["means"])))
                model.teeth_opacity_logits.fill_(_inv_sigmoid(0.5))
                model.teeth_sh_dc[:, 0] = (0.9 - 0.5) / SH_C0
                model.teeth_joint.copy_(torch.as_tensor(np.where(teeth["rows"] == 0, NECK_JOINT, JAW_JOINT)))
                model.teeth_cylinder.copy_(t(teeth["cylinder"][teeth["rows"]]))
        model.teeth_source = None if teeth is None else teeth["source"]
        return model

    def face_deltas(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Deformation-transfer deltas per triangle: G [F,9,K] (Q_k - I) and dq [F,4,K] (quat(R_k) - 1).

        Computed once from the rig (float64) and cached on the model's device.
        """
        device = self.means.device
        if self._face_deltas is None or self._face_deltas[0].device != device:
            fm, K = self.flame_model, self.config.n_blendshapes
            rest = fm.v_template.astype(np.float64)
            dirs = fm.shapedirs[:, :, fm.n_shape: fm.n_shape + K].astype(np.float64)
            deformed = rest[None] + np.moveaxis(dirs, 2, 0)  # [K,V,3] at psi_k = 1
            Q, _ = deformation_gradients(rest, deformed, fm.faces)  # [K,F,3,3]
            G = (Q - np.eye(3)).reshape(K, -1, 9).transpose(1, 2, 0)
            dq = rotation_quats(Q) - np.array([1.0, 0, 0, 0])
            dq = dq.transpose(1, 2, 0)
            self._face_deltas = (torch.as_tensor(G, dtype=torch.float32, device=device).contiguous(),
                                 torch.as_tensor(dq, dtype=torch.float32, device=device).contiguous())
        return self._face_deltas

    def _bound_face_deltas(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """face_deltas() restricted to the triangles in face_ids: (G [U,9,K], dq [U,4,K], inverse [N]),
        cached until the binding changes."""
        G, dq = self.face_deltas()
        key = (id(self.face_ids), self.face_ids._version, G.device)
        if getattr(self, "_bound_cache", None) is None or self._bound_cache[0] != key:
            used, inv = torch.unique(self.face_ids, return_inverse=True)
            self._bound_cache = (key, (G[used].contiguous(), dq[used].contiguous(), inv))
        return self._bound_cache[1]

    def rig(self) -> FlameRig:
        """The FLAME rig on the model's device (built once per device)."""
        device = self.means.device
        if self._rig is None or self._rig.device != device:
            self._rig = FlameRig(self.flame_model, device)
        return self._rig

    @property
    def n_gaussians(self) -> int:
        return int(self.means.shape[0])

    @property
    def n_teeth(self) -> int:
        return int(self.teeth_means.shape[0])

    # ------------------------------------------------------------------ evaluation

    def forward(self, params: FlameParams, sh_degree: int | None = None) -> list[Gaussians]:
        """Posed Gaussians for each of the B frames in `params` (fields [B, ...]).

        Returns B containers of N + M Gaussians (face first, then teeth), SH
        truncated to `sh_degree` (default: the active degree).
        """
        return self.evaluate(params, sh_degree).unbind()

    def evaluate(self, params: FlameParams, sh_degree: int | None = None) -> "FrameBatch":
        """As `forward`, but as batched tensors [B, N+M, ...] (see FrameBatch).

        Under torch.inference_mode on the CPU this runs `_evaluate_fast` (the same maths in one
        GEMM and one compiled pass); the code below is its specification and tests compare the two.
        """
        from emotalker.core.base import inference_kernels  # numba: imported when first needed

        degree = self.active_sh_degree if sh_degree is None else sh_degree
        k_sh = (degree + 1) ** 2
        rig = self.rig()
        verts, A = rig(params)  # [B,V,3], [B,J,4,4]
        B, K = verts.shape[0], self.config.n_blendshapes
        psi = self._expression_weights(params, B, verts)
        if inference_kernels.applicable(verts, A, psi):
            return self._evaluate_fast(psi, verts, A, degree)

        faces, fid, bary = rig.faces, self.face_ids, self.bary
        surface = interpolate_batched(verts, faces, fid, bary)  # [B,N,3]
        surface0 = interpolate(rig.v_template, faces, fid, bary)  # [N,3]
        G, dq_face, inv = self._bound_face_deltas()  # only the triangles that carry Gaussians
        Gp = (G.reshape(-1, K) @ psi.T).T.reshape(B, -1, 3, 3)[:, inv]  # [B,N,3,3]
        rq = (dq_face.reshape(-1, K) @ psi.T).T.reshape(B, -1, 4)
        rq = rq + torch.tensor([1.0, 0, 0, 0], device=rq.device)
        rq = nn.functional.normalize(rq, dim=-1)[:, inv]  # [B,N,4]
        deltas = self._masked_deltas()

        def blend(base, name):  # base [N,*D] -> [B,N,*D]: base + sum_k psi_k m_nk delta_nk
            d = deltas[name]
            out = d.reshape(-1, K) @ psi.T  # one matrix-vector product a frame
            return base[None] + out.T.reshape(B, *base.shape)

        off0 = self.means - surface0  # [N,3]
        offset = blend(off0, "d_means") + (Gp @ off0[None, :, :, None])[..., 0]
        L = torch.einsum("nj,bjrc->bnrc", self.lbs_weights, A[:, :, :3, :3])
        means = surface + (L @ offset[..., None])[..., 0]

        qj = _joint_quats(A)
        qpose = nn.functional.normalize(torch.einsum("nj,bjq->bnq", self.lbs_weights, qj), dim=-1)
        quats = quat_multiply(qpose, quat_multiply(rq, blend(self.quats, "d_quats")))
        log_scales = blend(self.log_scales, "d_log_scales")
        opacity = blend(self.opacity_logits, "d_opacity")
        sh_all = torch.cat([self.sh_dc, self.sh_rest], 1)  # [N,C,3]
        Cd = self.d_sh.shape[1]
        sh = torch.cat([blend(sh_all[:, :Cd], "d_sh"), sh_all[None, :, Cd:].expand(B, -1, -1, -1)], 2)[:, :, :k_sh]
        if degree >= 1:
            sh = rotate_sh_band1(sh, quat_to_matrix(qpose))
        face = FrameBatch(means, quats, log_scales, opacity, sh)
        return face.cat(self._posed_teeth(A, qj, degree)) if self.n_teeth else face

    def _expression_weights(self, params: FlameParams, B: int, like: torch.Tensor) -> torch.Tensor:
        """psi [B,K]: the first K expression coefficients of `params` (zeros where it has fewer)."""
        K = self.config.n_blendshapes
        expr = params.expr
        psi = torch.zeros(B, K, device=like.device) if expr is None else expr.to(like)[:, :K]
        if psi.shape[1] < K:
            psi = nn.functional.pad(psi, (0, K - psi.shape[1]))
        return psi

    def _posed_teeth(self, A: torch.Tensor, qj: torch.Tensor, degree: int) -> "FrameBatch":
        """The teeth of B frames [B,M,...], rigid with their joints: A [B,J,4,4], qj [B,J,4] (`_joint_quats`)."""
        B, k_sh = A.shape[0], (degree + 1) ** 2
        At = A[:, self.teeth_joint]  # [B,M,4,4]
        t_means = (At[..., :3, :3] @ self.teeth_means[None, :, :, None])[..., 0] + At[..., :3, 3]
        t_quats = quat_multiply(qj[:, self.teeth_joint], self.teeth_quats[None].expand(B, -1, -1))
        t_sh = torch.cat([self.teeth_sh_dc, self.teeth_sh_rest], 1)[None, :, :k_sh].expand(B, -1, -1, -1)
        if degree >= 1:
            t_sh = rotate_sh_band1(t_sh, At[..., :3, :3])
        return FrameBatch(t_means, t_quats, self.teeth_log_scales[None].expand(B, -1, -1),
                          self.teeth_opacity_logits[None].expand(B, -1), t_sh)

    def _evaluate_fast(self, psi: torch.Tensor, verts: torch.Tensor, A: torch.Tensor, degree: int) -> "FrameBatch":
        """`evaluate` under torch.inference_mode on the CPU. psi [B,K], verts [B,V,3], A [B,J,4,4].

        The per-Gaussian blends are one GEMM on a cached matrix (`_inference_blend`); everything
        else a face Gaussian needs is one compiled pass (inference_kernels.pose_face_gaussians)
        instead of some sixty tensor operations.
        """
        from emotalker.core.base.inference_kernels import pose_face_gaussians, run_parallel

        B, N, K = psi.shape[0], self.n_gaussians, self.config.n_blendshapes
        k_sh = (degree + 1) ** 2
        blend = self._inference_blend()
        deltas = psi @ blend["matrix"].T  # [B, N*C]; the kernel adds the base (addmm would spend a pass on it)
        _, dq_face, slot = self._bound_face_deltas()
        rq = psi @ dq_face.reshape(-1, K).T  # [B, U*4]: r_f(psi) before adding 1 and normalising
        qj = _joint_quats(A)
        out = FrameBatch.empty(B, N + self.n_teeth, k_sh, verts.device)
        sh_fixed = blend["sh_fixed"][:, : max(k_sh - self.d_sh.shape[1], 0)]
        arr = lambda t: t.contiguous().numpy()  # noqa: E731
        run_parallel(pose_face_gaussians, arr(verts), arr(blend["tri"]), arr(self.bary), arr(A[:, :, :3, :3]),
                     arr(self.lbs_weights), arr(qj), arr(rq.reshape(B, -1, 4)), arr(slot), arr(blend["base"]),
                     arr(deltas.reshape(B, N, -1)), arr(sh_fixed), degree >= 1,
                     *(arr(t) for t in out.fields()))
        if self.n_teeth:
            out.write_rows(N, self._posed_teeth(A, qj, degree))
        return out

    def _inference_blend(self) -> dict[str, torch.Tensor]:
        """What `_evaluate_fast` reads, cached until a parameter or the binding changes.

        matrix [N*C, K] and base [N,C]: channel c of Gaussian n is base[n,c] + sum_k psi_k matrix[nC+c, k].
        The C channels are the offset from the surface point (3), quaternion (4), log-scale (3),
        opacity logit (1) and the first Cd SH coefficients (3 Cd), each base + sum_k psi_k m_nk delta_nk.
        The offset's deformation-transfer term G_f(psi) off0 is linear in psi too, since
        off0 = x0 - s0 is the same in every frame: it is folded in as sum_k psi_k (G_fk off0).
        tri [N,3]: the vertices of each Gaussian's triangle; sh_fixed [N,C_sh-Cd,3]: the unblended SH.
        """
        names = ("means", "quats", "log_scales", "opacity_logits", "sh_dc", "sh_rest") + DELTA_NAMES
        key = _version_key([getattr(self, n) for n in names + ("masks", "face_ids", "bary")])
        if self._blend_cache is not None and self._blend_cache[0] == key:
            return self._blend_cache[1]
        rig = self.rig()
        N, K = self.n_gaussians, self.config.n_blendshapes
        G, _, slot = self._bound_face_deltas()
        off0 = self.means - interpolate(rig.v_template, rig.faces, self.face_ids, self.bary)  # [N,3]
        d = {name: _masked(getattr(self, name), self.masks).reshape(N, -1, K) for name in DELTA_NAMES}
        d_offset = d["d_means"] + torch.einsum("nrck,nc->nrk", G[slot].reshape(N, 3, 3, K), off0)
        sh_all = torch.cat([self.sh_dc, self.sh_rest], 1)  # [N,C_sh,3]
        Cd = self.d_sh.shape[1]
        bases = (off0, self.quats, self.log_scales, self.opacity_logits, sh_all[:, :Cd])
        deltas = (d_offset, d["d_quats"], d["d_log_scales"], d["d_opacity"], d["d_sh"])
        blend = {"base": torch.cat([b.reshape(N, -1) for b in bases], 1),
                 "matrix": torch.cat(deltas, 1).reshape(-1, K).contiguous(),
                 "tri": rig.faces[self.face_ids].contiguous(),
                 "sh_fixed": sh_all[:, Cd:].contiguous()}
        self._blend_cache = (key, {k: v.detach() for k, v in blend.items()})
        return self._blend_cache[1]

    def _masked_deltas(self) -> dict[str, torch.Tensor]:
        """Every learned delta times its mask, m_nk * delta_nk, shaped [N, *D, K].

        With gradients on they are recomputed (autograd needs the product); without,
        they are cached until a delta, the masks or the Gaussian count changes, so
        that evaluating a frame is one matrix-vector product per attribute.
        """
        names = DELTA_NAMES
        tensors = [getattr(self, n) for n in names] + [self.masks]
        key = _version_key(tensors)
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        if not grad and self._delta_cache is not None and self._delta_cache[0] == key:
            return self._delta_cache[1]
        out = {name: _masked(getattr(self, name), self.masks) for name in names}
        if not grad:
            self._delta_cache = (key, {k: v.detach() for k, v in out.items()})
        else:
            self._delta_cache = None
        return out

    def teeth_containment_loss(self) -> torch.Tensor:
        """Soft loss keeping each tooth Gaussian inside its row's cylinder shell (0 when inside)."""
        if not self.n_teeth:
            return self.means.sum() * 0
        x, c = self.teeth_means, self.teeth_cylinder
        r = torch.sqrt((x[:, 0] - c[:, 0]) ** 2 + (x[:, 2] - c[:, 1]) ** 2 + 1e-12)
        out = (torch.relu(c[:, 2] - r) ** 2 + torch.relu(r - c[:, 3]) ** 2
               + torch.relu(c[:, 4] - x[:, 1]) ** 2 + torch.relu(x[:, 1] - c[:, 5]) ** 2)
        return out.mean() / 1e-6  # in mm^2

    # ------------------------------------------------------------------ densify / prune

    def gather(self, index: torch.Tensor) -> None:
        """Keep face Gaussians `index` [N'] (repeats allowed), carrying deltas and binding along."""
        for name in GAUSSIAN_PARAMS:
            setattr(self, name, nn.Parameter(getattr(self, name).detach()[index].clone()))
        for name in GAUSSIAN_BUFFERS:
            setattr(self, name, getattr(self, name)[index].clone())
        self._delta_cache = self._blend_cache = None

    # ------------------------------------------------------------------ files

    def metadata(self, **extra) -> dict:
        """The JSON metadata stored beside the tensors (format, config, sizes)."""
        return {"format": FORMAT, "config": asdict(self.config), "active_sh_degree": self.active_sh_degree,
                "n_gaussians": self.n_gaussians, "n_teeth": self.n_teeth, **extra}

    def save(self, path: str | os.PathLike, **extra_meta) -> None:
        """Write neutral.safetensors atomically: every tensor, with the config in the metadata."""
        from emotalker.core.base.fileio import save_tensors

        save_tensors(path, dict(self.state_dict()), self.metadata(**extra_meta))

    @classmethod
    def load(cls, path: str | os.PathLike, flame_model: FlameModel, device="cpu") -> "GaussianBlendshapes":
        """Read a model written by `save`; InputError naming the file when it does not fit."""
        from emotalker.core.base.fileio import load_tensors

        tensors, meta = load_tensors(path)
        return cls.from_tensors(tensors, meta, flame_model, path).to(device)

    @classmethod
    def from_tensors(cls, tensors: dict, meta: dict, flame_model: FlameModel, path=None) -> "GaussianBlendshapes":
        """Rebuild a model from `save`'s tensors and metadata; InputError naming `path` when they do not fit."""
        from emotalker.core.base.errors import InputError

        if meta.get("format") != FORMAT:
            raise InputError(path, f"not a Stage 1 model (format {meta.get('format')!r}, expected {FORMAT!r})")
        try:
            cfg = BlendshapeConfig(**meta["config"])
            model = cls(flame_model, cfg, int(tensors["means"].shape[0]), int(tensors["teeth_means"].shape[0]))
            model.load_state_dict(tensors)
        except (KeyError, TypeError, RuntimeError) as exc:
            raise InputError(path, f"Stage 1 tensors do not match their config or the rig: {exc}") from None
        if (int(model.face_ids.max()) if model.n_gaussians else 0) >= len(flame_model.faces) or model.lbs_weights.shape[1] != flame_model.n_joints:
            raise InputError(path, "Stage 1 model was trained on a different FLAME rig (binding out of range)")
        model.active_sh_degree = int(meta.get("active_sh_degree", cfg.sh_degree))
        return model


@dataclass
class FrameBatch:
    """Posed Gaussians of B frames, raw: means [B,N,3], quats [B,N,4], log_scales [B,N,3],
    opacity_logits [B,N], sh [B,N,K,3]."""

    means: torch.Tensor
    quats: torch.Tensor
    log_scales: torch.Tensor
    opacity_logits: torch.Tensor
    sh: torch.Tensor

    @classmethod
    def empty(cls, B: int, n: int, k_sh: int, device=None) -> "FrameBatch":
        """Uninitialised float32 tensors for B frames of n Gaussians with k_sh SH coefficients."""
        e = lambda *s: torch.empty(*s, device=device)  # noqa: E731
        return cls(e(B, n, 3), e(B, n, 4), e(B, n, 3), e(B, n), e(B, n, k_sh, 3))

    def fields(self) -> tuple[torch.Tensor, ...]:
        return self.means, self.quats, self.log_scales, self.opacity_logits, self.sh

    def cat(self, other: "FrameBatch") -> "FrameBatch":
        """Each frame's Gaussians followed by the same frame's in `other`."""
        return FrameBatch(*(torch.cat([a, b], 1) for a, b in zip(self.fields(), other.fields())))

    def write_rows(self, start: int, other: "FrameBatch") -> None:
        """Copy `other`'s Gaussians [B,M,...] into rows start..start+M-1 of every frame."""
        for a, b in zip(self.fields(), other.fields()):
            a[:, start: start + b.shape[1]] = b

    @classmethod
    def stack(cls, frames: list[Gaussians]) -> "FrameBatch":
        """B frames' Gaussians (same count and SH degree) as one batch."""
        return cls(*(torch.stack(parts) for parts in zip(*((g.means, g.quats, g.log_scales, g.opacity_logits, g.sh)
                                                          for g in frames))))

    def unbind(self) -> list[Gaussians]:
        return [Gaussians(self.means[b], self.quats[b], self.log_scales[b], self.opacity_logits[b], self.sh[b])
                for b in range(self.means.shape[0])]
