"""The FLAME-format rig: its file (`flame_model.npz`), validation and batched LBS in torch.

A real FLAME 2020/2023 model converts into this format (see `flame_pickle`), and
the procedural default head is generated straight into it (see `head`). Every
later stage reads only this.

Joints follow FLAME: 0 root (global), 1 neck, 2 jaw, 3 left eye, 4 right eye.
Poses are axis-angle, 3 values a joint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from emotalker.core.base.errors import InputError

JOINT_NAMES = ("root", "neck", "jaw", "eye_left", "eye_right")
REQUIRED_KEYS = ("v_template", "f", "shapedirs", "n_shape", "n_expr", "posedirs", "J_regressor", "weights", "kintree_table")
REGION_PREFIX = "region."


@dataclass
class FlameModel:
    """The arrays of a FLAME-format rig, as numpy (float32 / int64).

    v_template [V,3], faces [F,3], shapedirs [V,3,S+E] (identity first, then
    expression), posedirs [V,3,9*(J-1)], J_regressor [J,V], weights [V,J],
    kintree_table [2,J] (row 0: parent, -1 for the root), eyelids [2,V,3] or
    None, regions: name -> vertex indices, albedo [V,3] in 0..1 or None,
    expr_names: one name a expression component, or empty.
    """

    v_template: np.ndarray
    faces: np.ndarray
    shapedirs: np.ndarray
    n_shape: int
    n_expr: int
    posedirs: np.ndarray
    J_regressor: np.ndarray
    weights: np.ndarray
    kintree_table: np.ndarray
    eyelids: np.ndarray | None = None
    regions: dict[str, np.ndarray] = field(default_factory=dict)
    albedo: np.ndarray | None = None
    expr_names: list[str] = field(default_factory=list)

    @property
    def n_verts(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def n_joints(self) -> int:
        return int(self.kintree_table.shape[1])

    @property
    def parents(self) -> np.ndarray:
        """Parent index of each joint, -1 for the root."""
        p = self.kintree_table[0].astype(np.int64).copy()
        p[0] = -1
        return p

    def validate(self, path: str | os.PathLike | None = None) -> "FlameModel":
        """Check every shape against every other; InputError naming `path` on the first mismatch."""
        V = self.v_template.shape[0] if self.v_template.ndim == 2 else -1
        J = self.kintree_table.shape[1] if self.kintree_table.ndim == 2 else -1

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise InputError(path, f"not a valid FLAME-format rig: {what}")

        need(self.v_template.ndim == 2 and self.v_template.shape[1] == 3 and V > 0, f"v_template must be [V,3], got {list(self.v_template.shape)}")
        need(self.kintree_table.ndim == 2 and self.kintree_table.shape[0] == 2 and J > 0, f"kintree_table must be [2,J], got {list(self.kintree_table.shape)}")
        need(self.faces.ndim == 2 and self.faces.shape[1] == 3, f"f must be [F,3], got {list(self.faces.shape)}")
        need(self.faces.size == 0 or (self.faces.min() >= 0 and self.faces.max() < V), "f indexes vertices that do not exist")
        need(self.shapedirs.ndim == 3 and self.shapedirs.shape[:2] == (V, 3), f"shapedirs must be [V,3,S+E] with V={V}, got {list(self.shapedirs.shape)}")
        need(self.n_shape >= 0 and self.n_expr >= 0 and self.n_shape + self.n_expr == self.shapedirs.shape[2],
             f"n_shape ({self.n_shape}) + n_expr ({self.n_expr}) must equal shapedirs' last size ({self.shapedirs.shape[2]})")
        need(self.posedirs.shape == (V, 3, 9 * (J - 1)), f"posedirs must be [V,3,{9 * (J - 1)}], got {list(self.posedirs.shape)}")
        need(self.J_regressor.shape == (J, V), f"J_regressor must be [{J},{V}], got {list(self.J_regressor.shape)}")
        need(self.weights.shape == (V, J), f"weights must be [{V},{J}], got {list(self.weights.shape)}")
        parents = self.parents
        need(all(0 <= parents[j] < j for j in range(1, J)), "kintree_table parents must come before their children")
        if self.eyelids is not None:
            need(self.eyelids.shape == (2, V, 3), f"eyelids must be [2,{V},3], got {list(self.eyelids.shape)}")
        if self.albedo is not None:
            need(self.albedo.shape == (V, 3), f"albedo must be [{V},3], got {list(self.albedo.shape)}")
        for name, idx in self.regions.items():
            need(idx.ndim == 1 and (idx.size == 0 or (idx.min() >= 0 and idx.max() < V)), f"region {name!r} indexes vertices that do not exist")
        need(len(self.expr_names) in (0, self.n_expr), f"expr_names has {len(self.expr_names)} names for {self.n_expr} components")
        for name in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights"):
            need(bool(np.isfinite(getattr(self, name)).all()), f"{name} holds NaN or infinite values")
        return self

    def expr_index(self, name: str) -> int:
        """Index of the expression component called `name` (procedural heads name theirs)."""
        try:
            return self.expr_names.index(name)
        except ValueError:
            raise KeyError(f"this rig has no expression component named {name!r}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write the npz atomically (no pickled objects inside)."""
        from emotalker.core.base.fileio import atomic_path

        arrays: dict[str, np.ndarray] = {
            "v_template": self.v_template.astype(np.float32),
            "f": self.faces.astype(np.int64),
            "shapedirs": self.shapedirs.astype(np.float32),
            "n_shape": np.int64(self.n_shape),
            "n_expr": np.int64(self.n_expr),
            "posedirs": self.posedirs.astype(np.float32),
            "J_regressor": self.J_regressor.astype(np.float32),
            "weights": self.weights.astype(np.float32),
            "kintree_table": self.kintree_table.astype(np.int64),
        }
        if self.eyelids is not None:
            arrays["eyelids"] = self.eyelids.astype(np.float32)
        if self.albedo is not None:
            arrays["albedo"] = self.albedo.astype(np.float32)
        if self.expr_names:
            arrays["expr_names"] = np.array(self.expr_names, dtype=np.str_)
        for name, idx in self.regions.items():
            arrays[REGION_PREFIX + name] = np.asarray(idx, dtype=np.int64)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FlameModel":
        """Read and validate a `flame_model.npz`; InputError naming the file on any problem."""
        from emotalker.core.base.fileio import read_npz

        path = Path(path)
        data = read_npz(path, "FLAME model")
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise InputError(path, f"not a FLAME-format rig: missing keys {', '.join(missing)}")
        kintree = data["kintree_table"].astype(np.int64)
        model = cls(
            v_template=data["v_template"].astype(np.float32),
            faces=data["f"].astype(np.int64),
            shapedirs=data["shapedirs"].astype(np.float32),
            n_shape=int(data["n_shape"]),
            n_expr=int(data["n_expr"]),
            posedirs=data["posedirs"].astype(np.float32),
            J_regressor=data["J_regressor"].astype(np.float32),
            weights=data["weights"].astype(np.float32),
            kintree_table=kintree,
            eyelids=data["eyelids"].astype(np.float32) if "eyelids" in data else None,
            regions={k[len(REGION_PREFIX):]: v.astype(np.int64) for k, v in data.items() if k.startswith(REGION_PREFIX)},
            albedo=data["albedo"].astype(np.float32) if "albedo" in data else None,
            expr_names=[str(s) for s in data["expr_names"]] if "expr_names" in data else [],
        )
        return model.validate(path)


# ---------------------------------------------------------------------------
# Batched LBS in torch
# ---------------------------------------------------------------------------


def axis_angle_to_matrix(aa):
    """Rodrigues' formula. aa [..., 3] -> rotation matrices [..., 3, 3]; exact and smooth at zero."""
    theta2 = (aa * aa).sum(-1, keepdim=True)
    theta = torch.sqrt(theta2 + 1e-16)
    small = theta2 < 1e-8
    # sin(t)/t and (1-cos t)/t^2 with Taylor series near zero keep gradients finite.
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / (theta2 + 1e-16))
    x, y, z = aa.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*aa.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(K)
    return eye + a[..., None] * K + b[..., None] * (K @ K)


@dataclass
class FlameParams:
    """Per-item FLAME parameters; every field is optional (zeros when None).

    shape [B,S], expr [B,E], global_pose [B,3], neck [B,3], jaw [B,3],
    eyes [B,6] (left then right), eyelids [B,2], transl [B,3].
    """

    shape: object = None
    expr: object = None
    global_pose: object = None
    neck: object = None
    jaw: object = None
    eyes: object = None
    eyelids: object = None
    transl: object = None

    def batch_size(self) -> int:
        for v in vars(self).values():
            if v is not None:
                return int(v.shape[0])
        return 1


class FlameRig:
    """A FlameModel's arrays as torch tensors on a device, with batched LBS.

    Create with `FlameRig(model, device)`; call `rig(params)` for vertices.
    """

    def __init__(self, model: FlameModel, device="cpu", dtype=None):
        dtype = dtype or torch.float32
        self.model = model
        self.device = torch.device(device)
        t = lambda a: torch.as_tensor(a, dtype=dtype, device=self.device)  # noqa: E731
        self.v_template = t(model.v_template)
        self.faces = torch.as_tensor(model.faces, dtype=torch.long, device=self.device)
        self.shapedirs = t(model.shapedirs[:, :, : model.n_shape])
        self.exprdirs = t(model.shapedirs[:, :, model.n_shape :])
        self.posedirs = t(model.posedirs)
        self.J_regressor = t(model.J_regressor)
        self.weights = t(model.weights)
        self.parents = model.parents.tolist()
        self.eyelids = t(model.eyelids) if model.eyelids is not None else None
        self.n_shape, self.n_expr, self.n_joints = model.n_shape, model.n_expr, model.n_joints

    def _coeffs(self, x, n: int, B: int, name: str):
        if x is None:
            return torch.zeros(B, n, dtype=self.v_template.dtype, device=self.device)
        if x.shape[-1] > n:
            raise ValueError(f"{name} has {x.shape[-1]} values but the rig has only {n}")
        return torch.nn.functional.pad(x.to(self.v_template), (0, n - x.shape[-1]))

    def full_pose(self, p: FlameParams, B: int):
        """Stack the joint rotations: [B, J, 3] axis-angle in FLAME's joint order."""
        z3 = torch.zeros(B, 3, dtype=self.v_template.dtype, device=self.device)
        parts = [p.global_pose, p.neck, p.jaw]
        parts = [z3 if x is None else x.to(z3) for x in parts]
        eyes = torch.zeros(B, 6, dtype=z3.dtype, device=self.device) if p.eyes is None else p.eyes.to(z3)
        pose = torch.cat(parts + [eyes], 1).reshape(B, -1, 3)
        return pose[:, : self.n_joints]

    def shaped(self, p: FlameParams, B: int):
        """Rest-pose vertices with identity, expression and eyelid offsets: [B,V,3]."""
        v = self.v_template.expand(B, -1, -1)
        if p.shape is not None:  # a rig with the identity applied (as every dataset's) needs no shape term
            v = v + torch.einsum("vcs,bs->bvc", self.shapedirs, self._coeffs(p.shape, self.n_shape, B, "shape"))
        v = v + torch.einsum("vce,be->bvc", self.exprdirs, self._coeffs(p.expr, self.n_expr, B, "expr"))
        if self.eyelids is not None and p.eyelids is not None:
            v = v + torch.einsum("kvc,bk->bvc", self.eyelids, p.eyelids.to(v))
        return v

    def __call__(self, p: FlameParams):
        """Posed vertices [B,V,3] and skinning transforms [B,J,4,4].

        The transforms map rest-pose points to posed points (rest joint removed),
        so a point bound to joint j moves as A_j @ [x, 1].
        """
        B = p.batch_size()
        v_shaped = self.shaped(p, B)
        joints = torch.einsum("jv,bvc->bjc", self.J_regressor, v_shaped)
        rots = axis_angle_to_matrix(self.full_pose(p, B))
        v_posed = v_shaped + self.pose_correctives(rots)
        A = self.joint_transforms(rots, joints)
        verts = self.skin(v_posed, A, self.weights)
        if p.transl is not None:
            verts = verts + p.transl.to(verts)[:, None]
            A = A.clone()
            A[:, :, :3, 3] += p.transl.to(verts)[:, None]
        return verts, A

    def pose_correctives(self, rots):
        """rots [B,J,3,3] -> corrective offsets [B,V,3] from the non-root joints' (R - I)."""
        B = rots.shape[0]
        eye = torch.eye(3, dtype=rots.dtype, device=rots.device)
        feat = (rots[:, 1:] - eye).reshape(B, -1)
        return torch.einsum("vcp,bp->bvc", self.posedirs, feat)

    def joint_transforms(self, rots, joints):
        """Forward kinematics. rots [B,J,3,3], rest joints [B,J,3] -> skinning transforms [B,J,4,4].

        Translations are built from (R - I) terms, never as differences of large
        numbers, so zero rotations give exactly the identity (and zero
        parameters give v_template bit for bit).
        """
        B, J = rots.shape[:2]
        eye = torch.eye(3, dtype=rots.dtype, device=rots.device)
        R = [rots[:, 0]]
        drift = [torch.zeros_like(joints[:, 0])]  # posed joint - rest joint
        for j in range(1, J):
            p = self.parents[j]
            R.append(R[p] @ rots[:, j])
            offset = (joints[:, j] - joints[:, p])[..., None]
            drift.append(drift[p] + ((R[p] - eye) @ offset)[..., 0])
        R = torch.stack(R, 1)
        drift = torch.stack(drift, 1)
        t = drift - ((R - eye) @ joints[..., None])[..., 0]
        A = torch.zeros(B, J, 4, 4, dtype=rots.dtype, device=rots.device)
        A[..., :3, :3] = R
        A[..., :3, 3] = t
        A[..., 3, 3] = 1
        return A

    @staticmethod
    def skin(points, A, weights):
        """Linear blend skinning. points [B,N,3], A [B,J,4,4], weights [N,J] -> [B,N,3].

        Blends each transform's deviation from identity, so identity transforms
        return the points unchanged even where the weights do not sum to 1 in float32.
        Under torch.inference_mode on the CPU a compiled kernel does the same maths in one pass.
        """
        from emotalker.core.base import inference_kernels as kernels

        if kernels.applicable(points, A, weights):
            out = torch.empty(points.shape)
            deviation = (A[:, :, :3] - torch.eye(4, dtype=A.dtype)[:3]).reshape(A.shape[0], -1, 12)
            kernels.run_parallel(kernels.skin_points, points.contiguous().numpy(), deviation.contiguous().numpy(),
                                 weights.contiguous().numpy(), out.numpy())
            return out
        eye = torch.eye(4, dtype=A.dtype, device=A.device)
        D = torch.einsum("nj,bjrc->bnrc", weights, A - eye)
        return points + torch.einsum("bnrc,bnc->bnr", D[..., :3, :3], points) + D[..., :3, 3]

