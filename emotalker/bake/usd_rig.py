"""The UsdSkel rig in a clip's .usdc: FLAME's proxy mesh, its shapes and its skeleton, animated by the curves.

The SkelRoot holds
- `Skeleton`: FLAME's joints (root, neck, jaw, eye_left, eye_right) at their rest
  positions (J_regressor @ v_template), bound to `Animation`;
- `Animation`: per frame, every joint's local translation and rotation, and the
  weights of the blend shapes;
- `Proxy`: the template mesh (albedo as displayColor) skinned with FLAME's
  weights, with a BlendShape per expression component (weight: the curves'
  expr), per eyelid shape (the curves' eyelids) and per non-zero pose-corrective
  column (weight: FLAME's (R - I) feature of that column).

UsdSkel deforms a mesh by its shapes, then by linear blend skinning with the
transforms world_j(t) @ inverse(bind_j); FLAME adds expression, eyelid and
pose-corrective offsets, then skins with FlameRig's transforms A_j(t). With
world_j(t) = A_j(t) @ bind_j (bind_j: the rest joint's translation) the two are
the same sum, so the proxy moves exactly as FLAME's mesh does. A_j(t) comes from
FlameRig itself, so the joints follow the expression as FLAME's regressed
joints do.
"""

from __future__ import annotations

import re

import numpy as np
import torch

JOINT_NAMES = ("root", "neck", "jaw", "eye_left", "eye_right")


def joint_paths(parents: np.ndarray) -> list[str]:
    """UsdSkel joint tokens: each joint's path from the root, e.g. root/neck/jaw."""
    paths: list[str] = []
    for j, parent in enumerate(parents):
        own = JOINT_NAMES[j] if j < len(JOINT_NAMES) else f"joint_{j}"
        paths.append(own if parent < 0 else f"{paths[parent]}/{own}")
    return paths


def flame_motion(flame, curves, frames: tuple[int, int]) -> dict[str, np.ndarray]:
    """FLAME's skinning transforms A [T,J,4,4] and pose-corrective features [T, 9*(J-1)] of the timeline
    `frames` (inclusive), with their blend-shape weights: expr [T,E] (padded to the rig's E) and eyelids [T,2]."""
    from emotalker.core.rig.flame import FlameParams, FlameRig, axis_angle_to_matrix

    rows = curves.rows(np.arange(frames[0], frames[1] + 1))
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a[rows]), dtype=torch.float32)  # noqa: E731
    params = FlameParams(expr=t(curves.expr), jaw=t(curves.jaw), neck=t(curves.neck), eyes=t(curves.eyes),
                         eyelids=t(curves.eyelids))
    rig = FlameRig(flame)
    with torch.inference_mode():
        n = len(rows)
        v_shaped = rig.shaped(params, n)
        joints = torch.einsum("jv,bvc->bjc", rig.J_regressor, v_shaped)
        rots = axis_angle_to_matrix(rig.full_pose(params, n))
        A = rig.joint_transforms(rots, joints)
        features = (rots[:, 1:] - torch.eye(3)).reshape(n, -1)
        expr = rig._coeffs(params.expr, rig.n_expr, n, "expr")
    return {"A": A.double().numpy(), "features": features.double().numpy(), "expr": expr.double().numpy(),
            "eyelids": curves.eyelids[rows].astype(np.float64)}


def local_transforms(A: np.ndarray, rest: np.ndarray, parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Skinning transforms A [T,J,4,4] and rest joints [J,3] -> each joint's local translation [T,J,3] and
    rotation [T,J,3,3] under its parent, such that world_j = A_j @ translate(rest_j)."""
    R = A[:, :, :3, :3]
    world_t = np.einsum("tjab,jb->tja", R, rest) + A[:, :, :3, 3]
    local_R, local_t = R.copy(), world_t.copy()
    for j, p in enumerate(parents):
        if p >= 0:
            parent_inv = np.swapaxes(R[:, p], -1, -2)
            local_R[:, j] = parent_inv @ R[:, j]
            local_t[:, j] = np.einsum("tab,tb->ta", parent_inv, world_t[:, j] - world_t[:, p])
    return local_t, local_R


def blend_shapes(flame, motion: dict[str, np.ndarray]) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """(names, offsets [V,3] each, weights [T,S]) of every non-zero shape: expressions, eyelids, pose correctives."""
    exprdirs = flame.shapedirs[:, :, flame.n_shape:]
    expr_names = flame.expr_names or [f"expr_{i:03d}" for i in range(flame.n_expr)]
    candidates = [(expr_names[i], exprdirs[:, :, i], motion["expr"][:, i]) for i in range(flame.n_expr)]
    if flame.eyelids is not None:
        candidates += [(f"eyelid_{k}", flame.eyelids[k], motion["eyelids"][:, k]) for k in range(2)]
    candidates += [(f"pose_corrective_{p:02d}", flame.posedirs[:, :, p], motion["features"][:, p])
                   for p in range(flame.posedirs.shape[2])]
    names, offsets, weights, used = [], [], [], set()
    for name, offset, weight in candidates:
        if not np.any(offset):
            continue
        ident = re.sub(r"[^A-Za-z0-9_]", "_", name)
        ident = ident if re.match(r"[A-Za-z_]", ident) else f"_{ident}"
        while ident in used:
            ident += "_"
        used.add(ident)
        names.append(ident)
        offsets.append(offset)
        weights.append(weight)
    T = len(motion["expr"])
    return names, offsets, np.stack(weights, axis=1) if weights else np.zeros((T, 0))


def define_rig(stage, path, flame, curves, frames: tuple[int, int]) -> None:
    """The SkelRoot at `path`: Skeleton, Animation (one sample a frame of `frames`) and the Proxy mesh."""
    from pxr import UsdSkel

    root = UsdSkel.Root.Define(stage, path)
    motion = flame_motion(flame, curves, frames)
    parents = flame.parents
    rest = (flame.J_regressor.astype(np.float64) @ flame.v_template.astype(np.float64))
    tokens = joint_paths(parents)
    names, offsets, weights = blend_shapes(flame, motion)
    skeleton = _define_skeleton(stage, root.GetPath().AppendChild("Skeleton"), tokens, rest, parents)
    anim = _define_animation(stage, root.GetPath().AppendChild("Animation"), tokens, names, motion, rest, parents,
                             weights, frames)
    UsdSkel.BindingAPI.Apply(skeleton.GetPrim()).CreateAnimationSourceRel().SetTargets([anim.GetPath()])
    _define_proxy(stage, root.GetPath().AppendChild("Proxy"), flame, skeleton, names, offsets)


def _translation(t) -> "object":
    from pxr import Gf

    m = Gf.Matrix4d(1.0)
    m.SetTranslateOnly(Gf.Vec3d(*map(float, t)))
    return m


def _define_skeleton(stage, path, tokens: list[str], rest: np.ndarray, parents: np.ndarray):
    from pxr import UsdSkel, Vt

    skeleton = UsdSkel.Skeleton.Define(stage, path)
    skeleton.CreateJointsAttr(tokens)
    skeleton.CreateJointNamesAttr([t.rsplit("/", 1)[-1] for t in tokens])
    skeleton.CreateBindTransformsAttr(Vt.Matrix4dArray([_translation(r) for r in rest]))
    local = [rest[j] - (rest[p] if p >= 0 else 0.0) for j, p in enumerate(parents)]
    skeleton.CreateRestTransformsAttr(Vt.Matrix4dArray([_translation(r) for r in local]))
    return skeleton


def _define_animation(stage, path, tokens, names, motion, rest, parents, weights, frames):
    from pxr import UsdSkel, Vt

    from emotalker.core.base.quaternion import matrix_to_quat

    anim = UsdSkel.Animation.Define(stage, path)
    anim.CreateJointsAttr(tokens)
    anim.CreateBlendShapesAttr(names)
    anim.CreateScalesAttr(Vt.Vec3hArray.FromNumpy(np.ones((len(tokens), 3), np.float16)))
    local_t, local_R = local_transforms(motion["A"], rest, parents)
    quats = matrix_to_quat(torch.from_numpy(local_R)).numpy()[..., [1, 2, 3, 0]]  # wxyz -> Vt's xyzw
    translations, rotations = anim.CreateTranslationsAttr(), anim.CreateRotationsAttr()
    shape_weights = anim.CreateBlendShapeWeightsAttr()
    for i, frame in enumerate(range(frames[0], frames[1] + 1)):
        translations.Set(Vt.Vec3fArray.FromNumpy(local_t[i].astype(np.float32)), float(frame))
        rotations.Set(Vt.QuatfArray.FromNumpy(quats[i].astype(np.float32)), float(frame))
        shape_weights.Set(Vt.FloatArray.FromNumpy(weights[i].astype(np.float32)), float(frame))
    return anim


def _define_proxy(stage, path, flame, skeleton, names: list[str], offsets: list[np.ndarray]) -> None:
    from pxr import Gf, UsdGeom, UsdSkel, Vt

    mesh = UsdGeom.Mesh.Define(stage, path)
    verts = flame.v_template.astype(np.float32)
    mesh.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(verts))
    mesh.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(len(flame.faces), 3, np.int32)))
    mesh.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(flame.faces.astype(np.int32).ravel()))
    mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    mesh.CreateExtentAttr(Vt.Vec3fArray.FromNumpy(np.stack([verts.min(0), verts.max(0)])))
    mesh.CreatePurposeAttr(UsdGeom.Tokens.proxy)
    if flame.albedo is not None:
        mesh.CreateDisplayColorPrimvar(UsdGeom.Tokens.vertex).Set(
            Vt.Vec3fArray.FromNumpy(flame.albedo.astype(np.float32)))
    binding = UsdSkel.BindingAPI.Apply(mesh.GetPrim())
    binding.CreateSkeletonRel().SetTargets([skeleton.GetPath()])
    n_joints = flame.weights.shape[1]
    binding.CreateJointIndicesPrimvar(False, n_joints).Set(
        Vt.IntArray.FromNumpy(np.tile(np.arange(n_joints, dtype=np.int32), flame.n_verts)))
    binding.CreateJointWeightsPrimvar(False, n_joints).Set(
        Vt.FloatArray.FromNumpy(flame.weights.astype(np.float32).ravel()))
    binding.CreateGeomBindTransformAttr(Gf.Matrix4d(1.0))
    targets = []
    for name, offset in zip(names, offsets):
        shape = UsdSkel.BlendShape.Define(stage, path.AppendChild(name))
        moved = np.flatnonzero(np.any(offset != 0, axis=1))
        shape.CreateOffsetsAttr(Vt.Vec3fArray.FromNumpy(offset[moved].astype(np.float32)))
        shape.CreatePointIndicesAttr(Vt.IntArray.FromNumpy(moved.astype(np.int32)))
        targets.append(shape.GetPath())
    binding.CreateBlendShapesAttr(names)
    binding.CreateBlendShapeTargetsRel().SetTargets(targets)
