"""Skinning of the procedural head: lip sides, LBS weights, joint regressor, eyelid rotations, posedirs.

Everything here is a pure function of the rest mesh (`HeadMesh`); shapes in docstrings.
Joints follow FLAME: 0 root, 1 neck, 2 jaw, 3 left eye (+X), 4 right eye.
"""

from __future__ import annotations

import numpy as np

from emotalker.core.head.surface import HeadMesh

EYE_JOINT = {1: 3, -1: 4}


def smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def bump(p, centre, radii):
    """Compactly supported smooth bump: (1 - |(p-c)/r|^2)^3 inside the ellipsoid, exactly 0 outside. -> [V]"""
    q = ((p - np.asarray(centre)) / np.asarray(radii)) ** 2
    return np.clip(1.0 - q.sum(1), 0.0, None) ** 3


def mouth_columns_out(m: HeadMesh) -> np.ndarray:
    """[C] how many columns each grid column lies beyond the mouth's corners (0 inside)."""
    C = m.n_cols
    j = np.arange(C)
    k = (len(m.mouth_cols) - 1) // 2
    return np.maximum(0, np.minimum(j, C - j) - k)


def lowerness(m: HeadMesh) -> np.ndarray:
    """[V] 0 on the upper lip side of the mouth, 1 on the lower; exact 0/1 across the slit, smooth beyond the corners."""
    V = len(m.verts)
    lam = np.zeros(V)
    g = m.grid_row >= 0
    rho = m.grid_row[g] - (m.mouth_row + 0.5)
    dc = mouth_columns_out(m)[m.grid_col[g]]
    lam[g] = smoothstep((rho + 0.25 * dc) / (1.0 + 0.6 * dc) + 0.5)
    lam[len(m.grid_row[g]) + 1] = 1.0  # bottom pole (neck base)
    t = m.mouth
    lam[t.rings[1:]] = np.broadcast_to(t.side < 0, t.rings[1:].shape)
    lam[t.cap] = 0.5
    for tube in m.eyes.values():
        lam[tube.rings[1:]] = 0.0
        lam[tube.cap] = 0.0
    for ids in m.eyeballs.values():
        lam[ids] = 0.0
    return lam


def jaw_weight(m: HeadMesh, lam: np.ndarray) -> np.ndarray:
    """[V] how much each vertex follows the jaw: the lower side, less at the corners, none at the back or neck."""
    p = m.verts
    am = m.anatomy.mouth_half_width
    lateral = smoothstep((np.abs(p[:, 0]) - 0.3 * am) / (0.9 * am))
    w = lam * (1 - 0.3 * lateral)
    w *= smoothstep((p[:, 2] + 0.025) / 0.035)
    w *= smoothstep((p[:, 1] + 0.125) / 0.03)
    t = m.mouth
    w[t.rings[1:]] = w[t.rings[0]][None, :] * np.ones((len(t.rings) - 1, 1))
    w[t.cap] = 0.5 * w[t.rings[0]].max()
    for ids in m.eyeballs.values():
        w[ids] = 0.0
    return w


def lbs_weights(m: HeadMesh, w_jaw: np.ndarray) -> np.ndarray:
    """[V,5] skinning weights: neck base on the root, the head on the neck joint, the lower face on the jaw."""
    p = m.verts
    y_ref = p[:, 1] + 0.35 * p[:, 2]  # the head/neck border runs lower under the chin than at the nape
    head = smoothstep((y_ref + 0.135) / 0.06)
    W = np.zeros((len(p), 5))
    W[:, 0] = 1 - head
    W[:, 2] = head * w_jaw
    W[:, 1] = head - W[:, 2]
    for side, ids in m.eyeballs.items():
        W[ids] = 0.0
        W[ids, EYE_JOINT[side]] = 1.0
    return W


def joint_regressor(m: HeadMesh) -> np.ndarray:
    """[5,V] joints as averages of vertices: neck base, upper neck, jaw hinge in front of the ears, eyeball centres."""
    p = m.verts
    skin = np.zeros(len(p), bool)
    skin[m.skin_verts] = True
    zc = -0.014

    def mean_of(sel, what):
        if not sel.any():
            raise RuntimeError(f"no vertices to place the {what} joint")
        return sel / sel.sum()

    J = np.zeros((5, len(p)))
    J[0] = mean_of(skin & (p[:, 1] < m.anatomy.neck_bottom + 0.002), "root")
    J[1] = mean_of(skin & (np.abs(p[:, 1] + 0.075) < 0.006) & (np.abs(p[:, 2] - zc) < 0.012) & (np.abs(p[:, 0]) > 0.03), "neck")
    J[2] = mean_of(skin & (np.abs(p[:, 1] + 0.018) < 0.007) & (np.abs(p[:, 2] - 0.008) < 0.008) & (np.abs(p[:, 0]) > 0.055), "jaw")
    for side, ids in m.eyeballs.items():
        sel = np.zeros(len(p), bool)
        sel[ids] = True
        J[EYE_JOINT[side]] = sel / sel.sum()
    return J


def lid_angles(m: HeadMesh, side: int):
    """Per eye-window vertex: (vertex ids [N], lid weight [N], upper? [N], column ids [N]) and the margin angles.

    Returns ids, weight, upper, beta_close: the rotation (about +X through the eyeball
    centre) that brings each vertex's lid margin to where the lids meet.
    """
    a = m.anatomy
    c = a.eye_centre(side)
    cols = m.eye_cols[side]
    C = m.n_cols
    up_ids, lo_ids = m.eye_row * C + cols, (m.eye_row + 1) * C + cols
    ang = lambda ids: np.arctan2(m.verts[ids, 1] - c[1], m.verts[ids, 2] - c[2])  # noqa: E731
    a_up, a_lo = ang(up_ids), ang(lo_ids)
    meet = a_lo + 0.28 * (a_up - a_lo)
    beta_up = a_up - meet + 0.015
    beta_lo = a_lo - meet - 0.015
    return cols, beta_up, beta_lo


def lid_field(m: HeadMesh, side: int, beta_up, beta_lo, rows_up: int = 6, rows_lo: int = 4, fade: int = 3):
    """Per-vertex rotation angles [V] about the eye's X axis for upper/lower lid angles given per core column.

    beta_up, beta_lo [len(core columns)]; grid rows fall off away from the margins,
    columns beyond the corners fade out, the pocket behind the lid turns with its margin.
    """
    cols = m.eye_cols[side]
    C = m.n_cols
    beta = np.zeros(len(m.verts))
    ext = np.concatenate([cols[0] - np.arange(fade, 0, -1), cols, cols[-1] + np.arange(1, fade + 1)]) % C
    dist = np.concatenate([np.arange(fade, 0, -1), np.zeros(len(cols)), np.arange(1, fade + 1)])
    f = 0.5 * (1 + np.cos(np.pi * dist / (fade + 1)))
    bu = np.concatenate([np.full(fade, beta_up[0]), beta_up, np.full(fade, beta_up[-1])]) * f
    bl = np.concatenate([np.full(fade, beta_lo[0]), beta_lo, np.full(fade, beta_lo[-1])]) * f
    for dr in range(rows_up):
        beta[(m.eye_row - dr) * C + ext] = bu * (1 - dr / rows_up) ** 2
    for dr in range(rows_lo):
        beta[(m.eye_row + 1 + dr) * C + ext] = bl * (1 - dr / rows_lo) ** 2
    tube = m.eyes[side]
    loop = tube.rings[0]
    beta[tube.rings[1:]] = beta[loop][None, :]
    return beta


def rotate_about_eye(p, centre, beta):
    """Offsets [V,3] that rotate points p [V,3] by beta [V] about the X axis through `centre`."""
    q = p - centre
    cb, sb = np.cos(beta), np.sin(beta)
    y = cb * q[:, 1] - sb * q[:, 2]
    z = sb * q[:, 1] + cb * q[:, 2]
    out = np.zeros_like(p)
    out[:, 1] = y - q[:, 1]
    out[:, 2] = z - q[:, 2]
    return out


def eyelid_shapes(m: HeadMesh) -> np.ndarray:
    """[2,V,3] eyelid blendshapes (left, right): at 1.0 the upper lid meets the lower over the eyeball."""
    out = np.zeros((2, len(m.verts), 3))
    for k, side in enumerate((1, -1)):
        _, bu, bl = lid_angles(m, side)
        beta = lid_field(m, side, bu, bl)
        out[k] = rotate_about_eye(m.verts, m.anatomy.eye_centre(side), beta)
    return out


def pose_correctives(m: HeadMesh, normals: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """[V,3,36] posedirs: offsets per entry of (R - I) of the neck, jaw and eye joints.

    Neck nod bunches the throat, neck turn bulges one side of the neck, jaw opening
    hollows the cheeks and draws the chin's soft tissue back, the lids follow the gaze.
    Antisymmetric pairs (R[2,1], R[1,2]) and (R[0,2], R[2,0]) carry +d/2 and -d/2 so a
    rotation by angle a gives d * sin(a).
    """
    p = m.verts
    V = len(p)
    P = np.zeros((V, 3, 36))

    def put(block, pair, d):
        (i, j) = pair
        P[:, :, block * 9 + i] += d / 2
        P[:, :, block * 9 + j] -= d / 2

    pitch, yaw = (7, 5), (2, 6)
    throat = bump(p, (0.0, -0.105, 0.035), (0.04, 0.03, 0.035))
    put(0, pitch, throat[:, None] * normals * 0.006)
    neck_side = bump(p, (-0.04, -0.095, 0.01), (0.025, 0.045, 0.04)) - bump(p, (0.04, -0.095, 0.01), (0.025, 0.045, 0.04))
    put(0, yaw, neck_side[:, None] * normals * 0.004)
    cheeks = bump(p, (0.048, -0.035, 0.05), (0.02, 0.025, 0.035)) + bump(p, (-0.048, -0.035, 0.05), (0.02, 0.025, 0.035))
    chin = bump(p, (0.0, -0.075, 0.075), (0.03, 0.03, 0.035)) * lam
    d = np.zeros((V, 3))
    d[:, 0] = -np.sign(p[:, 0]) * cheeks * 0.005
    d[:, 2] = -chin * 0.004
    put(1, pitch, d)
    for side, block in ((1, 2), (-1, 3)):
        _, bu, bl = lid_angles(m, side)
        w = lid_field(m, side, np.ones_like(bu), 0.3 * np.ones_like(bl))
        q = p - m.anatomy.eye_centre(side)
        d = np.zeros((V, 3))
        d[:, 1] = -q[:, 2] * 0.4 * w
        d[:, 2] = q[:, 1] * 0.4 * w
        put(block, pitch, d)
    for ids in m.eyeballs.values():
        P[ids] = 0.0
    return P
