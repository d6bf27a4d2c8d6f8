"""Fit a FLAME-format rig to a clip's 2D face landmarks: per-frame tracking in the dataset's conventions.

One clip is one batched optimisation (every frame at once, vectorised in torch):

    shared     identity (shape coefficients, with a prior) and the focal length (fx = fy,
               principal point at the image centre), unless given (held fixed)
    per frame  head rotation and translation (folded into `viewmat`, as the VHAP importer
               does), jaw, expression, gaze (both eyes turn together), eyelids

The energy: each embedded landmark's reprojection error under a Geman-McClure
robust loss (times the embedding's confidence; frames without a face have no
landmark term), temporal smoothness (squared accelerations at the clip's fps,
so the weights do not depend on the frame rate), L2 priors on expression and
shape, and soft limits on jaw, gaze and eyelids. Coarse to fine: the rigid
pose and focal length first, from the landmarks on the rig's rigid parts, then
everything. Residuals are measured in pixels of a face scaled to 256 pixels
(the landmarks' median bounding-box diagonal), so the weights hold at any resolution.

The neck stays at zero: from the front a neck turn and a head turn differ only on
the neck and shoulders, which carry no landmarks, so the whole rigid head motion
goes into `viewmat` (use `head_rotations` to compare with a tracking that has
neck rotations). `blink` is the mean of the two eyelids clipped to 0..1, as the
VHAP importer derives it (make-sample writes eyelids = [blink, blink]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from emotalker.core.base.errors import InputError
from emotalker.core.base.threads import single_threaded
from emotalker.core.datasets.dataset import Tracking
from emotalker.core.rig.flame import FlameModel, axis_angle_to_matrix

# FLAME space (+Y up, +Z out of the face) to OpenCV camera axes (y down, z forward): a camera on +Z.
FLAME_TO_CV = np.diag([1.0, -1.0, -1.0]).astype(np.float32)
FACE_SCALE = 256.0  # residuals are in pixels of a face whose landmarks span this diagonal


@dataclass(frozen=True)
class FitSettings:
    """Weights, limits and iteration counts of `fit_clip`; the defaults track 256-512 px talking heads."""

    rigid_steps: int = 150
    """Adam steps of the first stage (rigid pose and focal length only)."""
    steps: int = 350
    """Adam steps of the second stage (everything)."""
    refine_steps: int = 0
    """Levenberg-Marquardt iterations after the second stage (each costs about as many Adam steps
    as a frame has parameters)."""
    lr: float = 0.02
    """Adam's step size for rotations, expression, jaw, eyes, eyelids and shape (translations: lr / 10 m)."""
    init_fov: float = 30.0
    """Horizontal field of view (degrees) the focal length starts from and is pulled towards."""
    focal_prior: float = 0.5
    """Weight of the squared log-ratio of the focal length to its start."""
    robust_px: float = 4.0
    """Geman-McClure scale, in pixels of a 256-pixel face: residuals well above it count little."""
    rigid_fraction: float = 0.5
    """The share of landmarks (those least moved by expression, jaw and eyelids) the rigid stage fits."""
    smooth_rotation: float = 5e-4
    """Weight of the squared head angular acceleration (rad/s^2)."""
    smooth_translation: float = 0.5
    """Weight of the squared head acceleration (m/s^2)."""
    smooth_expr: float = 2e-6
    """Weight of the squared expression acceleration (units/s^2), summed over components."""
    smooth_jaw: float = 2e-6
    """Weight of the squared jaw angular acceleration (rad/s^2)."""
    smooth_eyes: float = 1e-6
    """Weight of the squared gaze acceleration (rad/s^2); saccades are fast."""
    smooth_eyelids: float = 1e-7
    """Weight of the squared eyelid acceleration (1/s^2); blinks take ~3 frames."""
    prior_expr: float = 0.3
    """Weight of the sum of squared expression coefficients."""
    prior_shape: float = 0.05
    """Weight of the sum of squared shape coefficients."""
    prior_jaw_side: float = 50.0
    """Weight of the squared sideways and twisting jaw rotation (y, z)."""
    jaw_open: tuple[float, float] = (-0.02, 0.6)
    """Limits of the jaw's opening rotation (x, radians)."""
    eyes_max: float = 0.6
    """Limit of the gaze's pitch and yaw (radians)."""
    eyelids: tuple[float, float] = (0.0, 1.0)
    """Limits of the eyelid blendshapes (0 open, 1 shut)."""
    limit_weight: float = 1e3
    """Weight of the squared excess over any limit."""


@dataclass
class ClipFit:
    """The fitted clip: identity, focal length, tracking in the dataset's conventions, residuals."""

    shape: np.ndarray  # float32 [S] identity
    focal: float  # fx = fy in pixels at the frames' resolution
    tracking: Tracking
    residual_px: np.ndarray  # float32 [F]: mean landmark reprojection error per frame (NaN: no face found)


class LandmarkRig:
    """The rig evaluated only at the embedded landmarks, with no global pose and no neck rotation.

    Exact, and much cheaper than posing every vertex: everything before skinning is
    linear in the coefficients, so each landmark's rest position (and its
    skinning-weighted copy per joint) is a fixed linear basis interpolated from its
    triangle's corners; with the root and neck at rest each other joint's transform is
    a rotation about its rest position, x -> x + (R - I)(x - j).

    response [L,3,E+2] (the embedding's): the points' motion per expression coefficient and eyelid
    as the landmark detector reports it, in place of the mesh's own (None: the mesh's).
    """

    def __init__(self, model: FlameModel, face: np.ndarray, bary: np.ndarray, response: np.ndarray | None = None):
        parents = model.parents
        if any(parents[j] > 1 for j in range(2, model.n_joints)):
            raise InputError(None, "the rig's joints past the neck must hang from the root or the neck (as FLAME's do)")
        self.n_shape, self.n_expr, self.n_joints = model.n_shape, model.n_expr, model.n_joints
        S, E = model.n_shape, model.n_expr
        V = model.n_verts
        lids = model.eyelids.transpose(1, 2, 0) if model.eyelids is not None else np.zeros((V, 3, 2), np.float32)
        # Columns: 1 (template), shape [S], then the per-frame ones: expr [E], eyelids [2], pose features.
        stack = lambda idx: np.concatenate([model.v_template[idx][..., None], model.shapedirs[idx], lids[idx],  # noqa: E731
                                            model.posedirs[idx]], -1).astype(np.float64)
        tri = model.faces[np.asarray(face, np.int64)]
        b = np.asarray(bary, np.float64)
        corners = stack(tri.reshape(-1)).reshape(*tri.shape, 3, -1)  # [L,3 corners,3,K]
        w = model.weights[tri].astype(np.float64)  # [L,3 corners,J]
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
        moved_by = slice(1 + S, 1 + S + E + 2)  # the expression and eyelid columns
        if response is not None and response.shape != (len(b), 3, E + 2):
            raise InputError(None, f"the landmark embedding's response has shape {list(response.shape)}, "
                                   f"the rig needs [{len(b)}, 3, {E + 2}]")
        points = np.einsum("lk,lkcn->lcn", b, corners)
        if response is not None:
            points[..., moved_by] = response
        self.fixed, self.varying = self._split(points, S)
        self.joints = []  # (joint, landmark rows, weight [n], fixed [n,3,1+S], varying [n*3,K'])
        for j in range(2, model.n_joints):
            omega = np.einsum("lk,lk->l", b, w[..., j])
            rows = np.nonzero(omega > 1e-6)[0]
            if len(rows):
                q = np.einsum("lk,lk,lkcn->lcn", b[rows], w[rows, :, j], corners[rows])
                if response is not None:  # the skinning weight's share of the reported motion
                    q[..., moved_by] = omega[rows, None, None] * response[rows]
                self.joints.append((j, torch.as_tensor(rows), t(omega[rows]), *self._split(q, S)))
        reg = model.J_regressor.astype(np.float64)
        jstack = np.einsum("jv,vcn->jcn", reg, stack(np.arange(V)))
        jstack[..., 1 + S + E + 2:] = 0  # joints come from the unposed shape: no pose correctives
        self.joint_fixed, self.joint_varying = self._split(jstack, S)

    @staticmethod
    def _split(basis: np.ndarray, S: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[N,3,K] -> the shared columns [N,3,1+S] and the per-frame ones as a matmul operand [K-1-S, N*3]."""
        fixed = torch.as_tensor(basis[..., : 1 + S], dtype=torch.float32)
        varying = torch.as_tensor(basis[..., 1 + S:].reshape(-1, basis.shape[-1] - 1 - S).T.copy(), dtype=torch.float32)
        return fixed, varying

    @staticmethod
    def _eval(fixed: torch.Tensor, varying: torch.Tensor, shape1: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
        """The basis' points [T,N,3] for shape1 = [1, shape] and the per-frame coefficients [T,K']."""
        base = fixed @ shape1  # [N,3]
        return base + (coeffs @ varying).reshape(coeffs.shape[0], -1, 3)

    def points(self, shape, expr, jaw, eyes, eyelids) -> torch.Tensor:
        """The embedded points [T,L,3] in FLAME space. shape [S] (shared), expr [T,E], jaw [T,3],
        eyes [T,6], eyelids [T,2]."""
        T = expr.shape[0]
        pose = torch.cat([torch.zeros(T, 6), jaw, eyes], 1).reshape(T, -1, 3)[:, : self.n_joints]
        rots = axis_angle_to_matrix(pose)
        feat = (rots[:, 1:] - torch.eye(3)).reshape(T, -1)
        coeffs = torch.cat([expr, eyelids, feat], 1)
        shape1 = torch.cat([torch.ones(1), shape.reshape(-1)])
        pts = self._eval(self.fixed, self.varying, shape1, coeffs)
        joints = self._eval(self.joint_fixed, self.joint_varying, shape1, coeffs)
        for j, rows, omega, fixed, varying in self.joints:
            d = self._eval(fixed, varying, shape1, coeffs) - omega[:, None] * joints[:, j, None]
            pts = pts.index_add(1, rows, torch.einsum("tij,tnj->tni", rots[:, j] - torch.eye(3), d))
        return pts


def head_rotations(tracking: Tracking) -> np.ndarray:
    """Each frame's head rotation in camera axes [T,3,3]: viewmat's rotation after the neck's.

    Compares trackings that split the rigid head motion differently between neck and camera."""
    neck = axis_angle_to_matrix(torch.as_tensor(tracking.neck, dtype=torch.float64)).numpy()
    return np.asarray(tracking.viewmat, np.float64)[:, :3, :3] @ neck


def rotation_error_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles (degrees) of the rotations between [T,3,3] stacks a and b."""
    rel = np.einsum("tij,tik->tjk", a, b)
    cos = np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1.0, 1.0)
    return np.degrees(np.arccos(cos))


@dataclass
class _Problem:
    """What the optimisation fits: observations, weights and the camera's fixed parts."""

    obs: torch.Tensor  # [T,L,2] pixels
    weight: torch.Tensor  # [T,L]: embedding confidence, zero on frames without a face
    rigid: torch.Tensor  # [L] bool: the landmarks the rigid stage fits
    centre: torch.Tensor  # [3] the rotation pivot: the landmarks' mean on the template
    principal: torch.Tensor  # [2] (W/2, H/2)
    norm: float  # pixels -> pixels of a FACE_SCALE face
    fps: float
    f0: float  # the focal length's start and prior


class _State:
    """The optimised tensors. Shared: shape, log focal; per frame: rot, trans, expr, jaw, gaze, lids."""

    def __init__(self, T: int, n_shape: int, n_expr: int, f0: float, shape, focal, rot0: np.ndarray, trans0: np.ndarray):
        z = lambda *s: torch.zeros(*s, requires_grad=True)  # noqa: E731
        self.expr, self.jaw, self.gaze, self.lids = z(T, n_expr), z(T, 3), z(T, 2), z(T, 2)
        self.rot = torch.tensor(rot0, dtype=torch.float32, requires_grad=True)
        self.trans = torch.tensor(trans0, dtype=torch.float32, requires_grad=True)
        self.fit_shape, self.fit_focal = shape is None, focal is None
        self.shape = z(n_shape) if shape is None else torch.as_tensor(np.asarray(shape, np.float32)).reshape(n_shape)
        log_f = math.log(f0 if focal is None else float(focal))
        self.log_f = torch.tensor(log_f, requires_grad=focal is None)

    def params(self, rigid: bool) -> list[dict]:
        """Adam's parameter groups for a stage (the rigid one: pose and focal length)."""
        groups = [{"params": [self.rot], "scale": 1.0}, {"params": [self.trans], "scale": 0.1}]
        if self.fit_focal:
            groups.append({"params": [self.log_f], "scale": 0.5})
        if not rigid:
            groups.append({"params": [self.expr, self.jaw, self.gaze, self.lids], "scale": 1.0})
            if self.fit_shape:
                groups.append({"params": [self.shape], "scale": 1.0})
        return groups

    def eyes(self) -> torch.Tensor:
        """Both eyes' axis-angle [T,6]: the same pitch and yaw (left then right), no roll."""
        p, y = self.gaze.unbind(-1)
        one = torch.stack([p, y, torch.zeros_like(p)], -1)
        return torch.cat([one, one], -1)

    def rig_args(self, neutral: bool = False) -> tuple[torch.Tensor, ...]:
        """LandmarkRig.points' arguments: shape, expr, jaw, eyes, eyelids (`neutral`: all but shape zero)."""
        if neutral:
            T = self.rot.shape[0]
            return self.shape.detach(), torch.zeros_like(self.expr), torch.zeros(T, 3), torch.zeros(T, 6), torch.zeros(T, 2)
        return self.shape, self.expr, self.jaw, self.eyes(), self.lids

    def camera_rotation(self) -> torch.Tensor:
        """World-to-camera rotations [T,3,3]: the head's rotation, then FLAME to OpenCV axes."""
        return torch.as_tensor(FLAME_TO_CV) @ axis_angle_to_matrix(self.rot)


def _project(state: _State, prob: _Problem, points: torch.Tensor) -> torch.Tensor:
    """FLAME-space points [T,L,3] -> pixels [T,L,2] through each frame's camera."""
    cam = torch.einsum("tij,tlj->tli", state.camera_rotation(), points - prob.centre) + state.trans[:, None]
    z = cam[..., 2:].clamp_min(1e-3)  # a point behind the camera would flip; keep the gradient finite
    return torch.exp(state.log_f) * cam[..., :2] / z + prob.principal


def _acceleration_cost(x: torch.Tensor, fps: float) -> torch.Tensor:
    """Mean over frames of the squared second difference at `fps`, summed over the last axis."""
    if x.shape[0] < 3:
        return x.new_zeros(())
    acc = (x[2:] - 2 * x[1:-1] + x[:-2]) * (fps * fps)
    return (acc * acc).sum(-1).mean()


def _excess(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Mean over frames of the squared amount by which x leaves [lo, hi], summed over the last axis."""
    return (torch.relu(x - hi) ** 2 + torch.relu(lo - x) ** 2).reshape(x.shape[0], -1).sum(-1).mean()


def _data_cost(state: _State, prob: _Problem, points: torch.Tensor, weight: torch.Tensor,
               sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Robust reprojection cost (mean per frame with a face) and the pixel residuals [T,L]."""
    resid = (_project(state, prob, points) - prob.obs).norm(dim=-1)
    r2 = (resid * prob.norm) ** 2
    rho = r2 * sigma**2 / (r2 + sigma**2)  # Geman-McClure: quadratic near zero, bounded for outliers
    per_frame = (rho * weight).sum(-1) / weight.sum(-1).clamp_min(1e-9)
    frames = (weight.sum(-1) > 0).float()
    return (per_frame * frames).sum() / frames.sum().clamp_min(1.0), resid


def _energy(state: _State, prob: _Problem, points: torch.Tensor, s: FitSettings,
            rigid: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The stage's total cost and the pixel residuals [T,L]."""
    weight = prob.weight * prob.rigid if rigid else prob.weight
    data, resid = _data_cost(state, prob, points, weight, s.robust_px)
    fps = prob.fps
    cost = data + s.smooth_rotation * _acceleration_cost(state.rot, fps) \
        + s.smooth_translation * _acceleration_cost(state.trans, fps)
    if state.fit_focal:
        cost = cost + s.focal_prior * (state.log_f - math.log(prob.f0)) ** 2
    if rigid:
        return cost, resid
    cost = cost + s.smooth_expr * _acceleration_cost(state.expr, fps) + s.smooth_jaw * _acceleration_cost(state.jaw, fps) \
        + s.smooth_eyes * _acceleration_cost(state.gaze, fps) + s.smooth_eyelids * _acceleration_cost(state.lids, fps)
    cost = cost + s.prior_expr * (state.expr**2).sum(-1).mean() + s.prior_shape * (state.shape**2).sum() \
        + s.prior_jaw_side * (state.jaw[:, 1:] ** 2).sum(-1).mean()
    limits = _excess(state.jaw[:, :1], *s.jaw_open) + _excess(state.gaze, -s.eyes_max, s.eyes_max) \
        + _excess(state.lids, *s.eyelids)
    return cost + s.limit_weight * limits, resid


def _rigid_landmarks(lrig: LandmarkRig, fraction: float, n_samples: int = 24) -> np.ndarray:
    """bool [L]: the share `fraction` of landmarks that expression, jaw, gaze and eyelids move least."""
    g = torch.Generator().manual_seed(0)
    n_expr = lrig.n_expr
    jaw = torch.zeros(n_samples, 3)
    jaw[:, 0] = torch.rand(n_samples, generator=g) * 0.3
    eyes = torch.randn(n_samples, 6, generator=g) * 0.2
    shape = torch.zeros(lrig.n_shape)
    with torch.no_grad():
        moved = lrig.points(shape, torch.randn(n_samples, n_expr, generator=g) * 0.3, jaw, eyes,
                            torch.rand(n_samples, 2, generator=g))
        moved = moved - lrig.points(shape, torch.zeros(1, n_expr), torch.zeros(1, 3), torch.zeros(1, 6), torch.zeros(1, 2))
    motion = moved.norm(dim=-1).pow(2).mean(0).sqrt().numpy()
    n = max(6, int(round(fraction * len(motion))))
    return motion <= np.sort(motion)[min(n, len(motion)) - 1]


def _initial_pose(template: np.ndarray, obs: np.ndarray, found: np.ndarray, weight: np.ndarray,
                  f0: float, principal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """rot [T,3] (axis-angle) from a weak-perspective fit of the template's landmarks (centred on the
    pivot) to each frame's, a least-squares affine camera made orthonormal; trans [T,3] then from a
    perspective solve at the focal length f0.

    Frames without a face take the values of the nearest frames with one (linearly interpolated)."""
    from scipy.spatial.transform import Rotation

    sw = np.sqrt(weight / weight.sum())[:, None]
    X = template * sw  # [L,3], the pivot at the origin
    centre = (weight[None, :, None] * obs).sum(1) / weight.sum()  # [T,2]
    Y = (obs - centre[:, None]) * sw[None]  # [T,L,2]
    A = np.einsum("ij,tjk->tik", np.linalg.pinv(X), Y).transpose(0, 2, 1)  # [T,2,3]: scale * rows of R
    U, _, Vt = np.linalg.svd(A, full_matrices=False)
    rows = U @ Vt  # the nearest pair of orthonormal rows
    R = np.concatenate([rows, np.cross(rows[:, 0], rows[:, 1])[:, None]], 1)
    rot = Rotation.from_matrix(FLAME_TO_CV.astype(np.float64) @ R).as_rotvec()
    trans = np.zeros((len(obs), 3))
    trans[found] = _perspective_translation(template, obs[found], weight, R[found], f0, principal)
    pose = np.concatenate([rot, trans], 1)
    idx = np.arange(len(obs))
    for k in range(6):
        pose[:, k] = np.interp(idx, idx[found], pose[found, k])
    return pose[:, :3].astype(np.float32), pose[:, 3:].astype(np.float32)


def _perspective_translation(template: np.ndarray, obs: np.ndarray, weight: np.ndarray, R: np.ndarray, f: float,
                             principal: np.ndarray) -> np.ndarray:
    """trans [T,3] that best projects the rotated template (R [T,3,3] camera rotations) onto obs [T,L,2]
    through focal length f: linear least squares per frame, since u - cx = f x / z gives
    f tx - (u - cx) tz = (u - cx) (R X)_z - f (R X)_x, and likewise for v.

    The weak-perspective scale alone puts the head too far away (by ~10 % on a 256-pixel face), which
    the fit's small translation steps then take hundreds of steps to walk back."""
    P = np.einsum("tij,lj->tli", R, template)  # [T,L,3]
    d = obs - principal  # [T,L,2]
    T, L = d.shape[:2]
    A = np.zeros((T, L, 2, 3))
    A[..., 0, 0] = A[..., 1, 1] = f
    A[..., :, 2] = -d
    b = d * P[..., 2:] - f * P[..., :2]  # [T,L,2]
    w = np.sqrt(weight)[None, :, None]
    A, b = (A * w[..., None]).reshape(T, 2 * L, 3), (b * w).reshape(T, 2 * L)
    return np.linalg.solve(np.einsum("tmi,tmj->tij", A, A), np.einsum("tmi,tm->ti", A, b))


def _problem(lrig: LandmarkRig, emb, track, width: int, height: int, fps: float, focal, s: FitSettings,
             template: np.ndarray) -> _Problem:
    """The clip's observations, weights and the camera's fixed parts."""
    obs = np.asarray(track.points, np.float32)[:, np.asarray(emb.landmark)]
    found = np.asarray(track.found, bool) & np.isfinite(obs).all((1, 2))
    weight = np.asarray(emb.weight, np.float32)
    w = np.where(found[:, None], weight[None], 0.0).astype(np.float32)
    lo, hi = obs[found].min(1), obs[found].max(1)
    diag = float(np.median(np.linalg.norm(hi - lo, axis=-1)))
    f0 = 0.5 * width / math.tan(math.radians(s.init_fov) / 2) if focal is None else float(focal)
    obs = np.where(found[:, None, None], obs, 0.0).astype(np.float32)
    return _Problem(
        obs=torch.as_tensor(obs), weight=torch.as_tensor(w),
        rigid=torch.as_tensor(_rigid_landmarks(lrig, s.rigid_fraction)),
        centre=torch.as_tensor((weight[:, None] * template).sum(0) / weight.sum(), dtype=torch.float32),
        principal=torch.tensor([width / 2, height / 2], dtype=torch.float32),
        norm=FACE_SCALE / max(diag, 1e-6), fps=float(fps), f0=f0,
    )


def _optimise(state: _State, prob: _Problem, lrig: LandmarkRig, s: FitSettings, rigid: bool, steps: int, bar) -> None:
    """Adam on one stage's parameters; the step size falls tenfold over the last 40 % of the steps."""
    groups = state.params(rigid)
    opt = torch.optim.Adam([{**g, "lr": s.lr * g["scale"]} for g in groups])
    neutral = None
    if rigid:  # the rigid stage moves no rig parameter: pose the landmarks once
        with torch.no_grad():
            neutral = lrig.points(*state.rig_args(neutral=True))
    for step in range(steps):
        frac = step / max(steps - 1, 1)
        for g in opt.param_groups:
            g["lr"] = s.lr * g["scale"] * (1.0 if frac < 0.4 else 10 ** (-3 * (frac - 0.4) / 0.6))
        opt.zero_grad(set_to_none=True)
        points = neutral if rigid else lrig.points(*state.rig_args())
        cost, resid = _energy(state, prob, points, s, rigid)
        cost.backward()
        opt.step()
        if bar is not None:
            bar.update(1, loss=float(cost.detach()))


FRAME_FIELDS = ("rot", "trans", "expr", "jaw", "gaze", "lids")
SMOOTH_WEIGHTS = ("smooth_rotation", "smooth_translation", "smooth_expr", "smooth_jaw", "smooth_eyes", "smooth_eyelids")


def _residuals(state: _State, prob: _Problem, lrig: LandmarkRig, s: FitSettings, irls: torch.Tensor) -> torch.Tensor:
    """Per-frame residuals [T,M] whose squares sum to the energy's landmark, prior and limit terms
    (the robust loss as iteratively reweighted least squares, `irls` [T,L]); no smoothness."""
    T = state.rot.shape[0]
    frames = (prob.weight.sum(-1) > 0).float()
    scale = prob.norm * torch.sqrt(irls * prob.weight / prob.weight.sum(-1, keepdim=True).clamp_min(1e-9) / frames.sum().clamp_min(1.0))
    data = (_project(state, prob, lrig.points(*state.rig_args())) - prob.obs) * scale[..., None]
    lo, hi = s.jaw_open
    limits = torch.cat([torch.relu(state.jaw[:, :1] - hi), torch.relu(lo - state.jaw[:, :1]),
                        torch.relu(state.gaze.abs() - s.eyes_max), torch.relu(state.lids - s.eyelids[1]),
                        torch.relu(s.eyelids[0] - state.lids)], 1)
    return torch.cat([data.reshape(T, -1), math.sqrt(s.prior_expr / T) * state.expr,
                      math.sqrt(s.prior_jaw_side / T) * state.jaw[:, 1:], math.sqrt(s.limit_weight / T) * limits], 1)


def _gauss_newton_system(state: _State, prob: _Problem, lrig: LandmarkRig, s: FitSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """The energy's gradient [T,P] over the per-frame parameters and each frame's Gauss-Newton block [T,P,P]
    of its landmark, prior and limit terms (smoothness, which couples frames, is added by `_banded`)."""
    fields = [getattr(state, f) for f in FRAME_FIELDS]
    cost, resid = _energy(state, prob, lrig.points(*state.rig_args()), s, False)
    grad = torch.cat(torch.autograd.grad(cost, fields), 1).double()
    r2 = (resid.detach() * prob.norm) ** 2
    irls = s.robust_px**4 / (r2 + s.robust_px**2) ** 2  # Geman-McClure's derivative in r^2
    sizes = [f.shape[1] for f in fields]
    cols = []
    with torch.no_grad():
        for i, field in enumerate(fields):
            for k in range(sizes[i]):
                tangent = [torch.zeros_like(f) for f in fields]
                tangent[i][:, k] = 1.0
                cols.append(_jvp(state, prob, lrig, s, irls, fields, tangent))
    J = torch.stack(cols, -1).double()  # [T,M,P]
    H = 2 * J.transpose(1, 2) @ J
    return grad, H


def _jvp(state, prob, lrig, s, irls, fields, tangent) -> torch.Tensor:
    """The residuals' derivative [T,M] along `tangent` (one tensor a per-frame field)."""
    def f(*values):
        saved = [getattr(state, n) for n in FRAME_FIELDS]
        for n, v in zip(FRAME_FIELDS, values):
            setattr(state, n, v)
        try:
            return _residuals(state, prob, lrig, s, irls)
        finally:
            for n, v in zip(FRAME_FIELDS, saved):
                setattr(state, n, v)

    import warnings

    import torch.autograd.forward_ad as fwad

    with warnings.catch_warnings(), fwad.dual_level():
        warnings.simplefilter("ignore", DeprecationWarning)  # forward AD's first use scripts a helper
        out = f(*(fwad.make_dual(x.detach(), t) for x, t in zip(fields, tangent)))
        return fwad.unpack_dual(out).tangent


def _banded(H: torch.Tensor, sizes: list[int], s: FitSettings, fps: float) -> np.ndarray:
    """The whole Hessian in solveh_banded's upper form (frame-major unknowns, bandwidth two frames):
    the frames' blocks H [T,P,P] plus the smoothness terms' exact second differences."""
    T, P, _ = H.shape
    u = 2 * P
    ab = np.zeros((u + 1, T * P))
    Hn = H.numpy()
    for d in range(P):  # the blocks' d-th superdiagonals
        ab[u - d].reshape(T, P)[:, d:] = np.diagonal(Hn, offset=d, axis1=1, axis2=2)
    if T >= 3:
        D = np.zeros((T - 2, T))
        D[np.arange(T - 2), np.arange(T - 2)] = D[np.arange(T - 2), np.arange(2, T)] = 1.0
        D[np.arange(T - 2), np.arange(1, T - 1)] = -2.0
        M = D.T @ D  # pentadiagonal
        c = np.concatenate([np.full(n, 2 * getattr(s, w) * fps**4 / (T - 2)) for n, w in zip(sizes, SMOOTH_WEIGHTS)])
        for k in range(3):  # frame offsets 0, 1, 2
            band = np.diagonal(M, offset=k)[:, None] * c[None]  # [T-k, P]
            ab[u - k * P].reshape(T, P)[k:] += band
    return ab


def _refine(state: _State, prob: _Problem, lrig: LandmarkRig, s: FitSettings, steps: int, bar) -> None:
    """Levenberg-Marquardt on all per-frame parameters at once after Adam (a banded system: frames
    couple only through smoothness). It walks the long flat valleys (expression against jaw and
    eyelids) that Adam's per-parameter steps crawl along."""
    from scipy.linalg import solveh_banded

    fields = [getattr(state, f) for f in FRAME_FIELDS]
    sizes = [f.shape[1] for f in fields]
    damping = 1e-3
    for _ in range(steps):
        grad, H = _gauss_newton_system(state, prob, lrig, s)
        ab = _banded(H, sizes, s, prob.fps)
        g = grad.numpy().reshape(-1)
        diag = ab[-1].copy()
        with torch.no_grad():
            before = [f.clone() for f in fields]
            cost0 = cost = float(_energy(state, prob, lrig.points(*state.rig_args()), s, False)[0])
            for _ in range(8):
                ab[-1] = diag * (1 + damping) + 1e-9
                step = torch.as_tensor(solveh_banded(ab, -g, check_finite=False).reshape(grad.shape), dtype=torch.float32)
                for f, b, d in zip(fields, before, step.split(sizes, 1)):
                    f.copy_(b + d)
                cost = float(_energy(state, prob, lrig.points(*state.rig_args()), s, False)[0])
                if cost < cost0:
                    damping = max(damping / 3, 1e-7)
                    break
                damping *= 4
            else:
                for f, b in zip(fields, before):
                    f.copy_(b)
        if bar is not None:
            bar.update(1, loss=min(cost, cost0))


def _tracking(state: _State, width: int, height: int, centre: torch.Tensor, s: FitSettings) -> Tracking:
    """The fitted parameters in the dataset's conventions (head motion folded into viewmat)."""
    with torch.no_grad():
        T = state.rot.shape[0]
        R = state.camera_rotation()
        view = torch.eye(4).repeat(T, 1, 1)
        view[:, :3, :3] = R
        view[:, :3, 3] = state.trans - R @ centre
        f = float(torch.exp(state.log_f))
        K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]]).repeat(T, 1, 1)
        lids = state.lids.clamp(*s.eyelids)
        jaw = state.jaw.clone()
        jaw[:, 0] = jaw[:, 0].clamp(*s.jaw_open)
        n = lambda x: x.detach().numpy().astype(np.float32)  # noqa: E731
        return Tracking(expr=n(state.expr), jaw=n(jaw), neck=np.zeros((T, 3), np.float32),
                        eyes=n(state.eyes().clamp(-s.eyes_max, s.eyes_max)), eyelids=n(lids),
                        blink=n(lids.mean(-1).clamp(0, 1)), K=n(K), viewmat=n(view))


def _progress(progress, total: int):
    """A Progress for the fit: the one given, or one made from a mode string ("bar", "json", "none")."""
    from contextlib import nullcontext

    from emotalker.core.base.progress import Progress

    if progress is None:
        return nullcontext(None)
    if isinstance(progress, str):
        return Progress("fit", total=total, mode=progress)
    return nullcontext(progress)


def fit_steps(settings: FitSettings = FitSettings()) -> int:
    """How many progress steps `fit_clip` reports."""
    return settings.rigid_steps + settings.steps + settings.refine_steps


def fit_clip(model: FlameModel, emb, track, width: int, height: int, fps: float, shape: np.ndarray | None = None,
             focal: float | None = None, settings: FitSettings = FitSettings(), progress=None) -> ClipFit:
    """Fit `model` to a clip's landmarks (`track`: LandmarkTrack) through the embedding `emb`.

    width, height: the frames' size in pixels; fps: the clip's frame rate (smoothness is per second).
    shape [S] / focal (pixels) given: held fixed (later videos of one person). `progress`: a Progress
    (one update a step, `fit_steps(settings)` in all), a mode string, or None.
    InputError when no frame has a face or the embedding does not fit the rig.
    """
    face = np.asarray(emb.face, np.int64)
    if len(face) == 0 or face.min() < 0 or face.max() >= len(model.faces):
        raise InputError(None, f"the landmark embedding does not fit this rig ({len(model.faces)} triangles)")
    if shape is not None and np.asarray(shape).size != model.n_shape:
        raise InputError(None, f"shape has {np.asarray(shape).size} coefficients, the rig {model.n_shape}")
    found = np.asarray(track.found, bool)
    if not found.any():
        raise InputError(None, "no face was found in any frame")
    torch.manual_seed(0)
    lrig = LandmarkRig(model, face, emb.bary, emb.response)
    state0 = shape if shape is not None else np.zeros(model.n_shape, np.float32)
    with torch.no_grad():
        shape0 = torch.as_tensor(np.asarray(state0, np.float32)).reshape(-1)
        template = lrig.points(shape0, torch.zeros(1, model.n_expr), torch.zeros(1, 3), torch.zeros(1, 6), torch.zeros(1, 2))[0].numpy()
    prob = _problem(lrig, emb, track, width, height, fps, focal, settings, template)
    rigid = prob.rigid.numpy()
    rot0, trans0 = _initial_pose(template[rigid] - prob.centre.numpy(), prob.obs.numpy()[:, rigid],
                                 prob.weight.sum(-1).numpy() > 0, np.asarray(emb.weight, np.float32)[rigid],
                                 prob.f0, prob.principal.numpy())
    state = _State(len(found), model.n_shape, model.n_expr, prob.f0, shape, focal, rot0, trans0)
    with _progress(progress, fit_steps(settings)) as bar, single_threaded():
        _optimise(state, prob, lrig, settings, True, settings.rigid_steps, bar)
        _optimise(state, prob, lrig, settings, False, settings.steps, bar)
        _refine(state, prob, lrig, settings, settings.refine_steps, bar)
    with torch.no_grad():
        _, resid = _energy(state, prob, lrig.points(*state.rig_args()), settings, False)
    w = prob.weight
    residual = ((resid * w).sum(-1) / w.sum(-1).clamp_min(1e-9)).numpy().astype(np.float32)
    residual[~(w.sum(-1) > 0).numpy()] = np.nan
    return ClipFit(shape=state.shape.detach().numpy().astype(np.float32).copy(), focal=float(torch.exp(state.log_f.detach())),
                   tracking=_tracking(state, width, height, prob.centre, settings), residual_px=residual)
