"""Identity and expression components of the procedural head, each a local, anatomically meant field.

A component is an offset field `[V,3]` at coefficient 1.0, built from compactly
supported bumps around landmarks, so a brow component is exactly zero on the lips.
The mouth pocket follows its lip line (fading inwards); the eyeballs never move
with an expression and move rigidly with identity.
"""

from __future__ import annotations

import numpy as np

from emotalker.core.head.rig import bump, lid_angles, lid_field, rotate_about_eye
from emotalker.core.head.surface import HeadMesh

EXPRESSION_NAMES = (
    "smile", "frown", "lips_pucker", "lips_funnel", "lips_press", "upper_lip_raise", "lower_lip_depress",
    "mouth_stretch", "lips_part", "brow_inner_raise", "brow_outer_raise", "brow_lower", "cheek_raise",
    "nose_wrinkle", "eyes_squint", "eyes_widen", "cheek_puff", "smile_left", "smile_right", "frown_left",
    "frown_right", "mouth_left", "mouth_right", "lower_lip_roll_in", "upper_lip_roll_in", "chin_raise",
    "lips_tighten", "dimple_left", "dimple_right", "brow_inner_raise_left", "brow_inner_raise_right",
    "brow_outer_raise_left", "brow_outer_raise_right", "brow_lower_left", "brow_lower_right", "squint_left",
    "squint_right", "nostril_flare", "cheek_suck", "upper_lip_raise_left", "upper_lip_raise_right",
    "lower_lip_depress_left", "lower_lip_depress_right", "sneer_left", "sneer_right", "lips_stretch_left",
    "lips_stretch_right", "neck_tense", "forehead_wrinkle", "chin_dimple",
)

IDENTITY_NAMES = (
    "head_width", "face_length", "nose_size", "nose_length", "jaw_width", "lip_fullness", "eye_spacing",
    "brow_height", "cheek_fullness", "chin_length", "forehead_height", "head_depth", "ear_size",
)

SIDES = {"left": (1,), "right": (-1,), "both": (1, -1)}


class _Fields:
    """Landmarks and per-vertex helpers shared by the component definitions."""

    def __init__(self, m: HeadMesh, normals: np.ndarray, lam: np.ndarray):
        self.m, self.p, self.n, self.lam = m, m.verts, normals, lam
        a = m.anatomy
        self.my, self.mz = a.mouth_y, a.mouth_z
        loop = m.mouth.rings[0]
        W = len(m.mouth_cols)
        self.corner = {1: m.verts[loop[W - 1]], -1: m.verts[loop[0]]}
        self.up = 1.0 - lam

    def zero(self):
        return np.zeros_like(self.p)

    def field(self, mask, vec):
        return mask[:, None] * np.asarray(vec, dtype=np.float64)


def _split_side(name: str) -> tuple[str, str]:
    """(base, side) of a component name: `brow_lower_left` -> (`brow_lower`, `left`), `smile` -> (`smile`, `both`).

    mouth_left / mouth_right move the whole mouth, so they are components of their own.
    """
    for suffix in ("_left", "_right"):
        if name.endswith(suffix) and not name.startswith("mouth_"):
            return name[: -len(suffix)], suffix[1:]
    return name, "both"


def _expression(F: _Fields, name: str) -> np.ndarray:
    """One expression component [V,3]: lid rotations, a per-side field, or a field on the midline."""
    base, side = _split_side(name)
    if base == "squint":
        base = "eyes_squint"
    if base in ("eyes_squint", "eyes_widen"):
        return _lid_expression(F, base, SIDES[side])
    d = _per_side_expression(F, base, side)
    if side != "both" or d.any():
        return d
    return _midline_expression(F, base, name)


def _lid_expression(F: _Fields, base: str, sides) -> np.ndarray:
    """eyes_squint / eyes_widen: both lids turn about the eye; a squint also lifts the cheek under it."""
    p, d = F.p, F.zero()
    up_b, lo_b = (0.06, -0.17) if base == "eyes_squint" else (-0.17, 0.05)
    for s in sides:
        cols, _, _ = lid_angles(F.m, s)
        beta = lid_field(F.m, s, np.full(len(cols), up_b), np.full(len(cols), lo_b))
        d += rotate_about_eye(p, F.m.anatomy.eye_centre(s), beta)
    if base == "eyes_squint":
        for s in sides:
            d += F.field(bump(p, (s * 0.036, 0.0, 0.07), (0.022, 0.02, 0.03)), (0, 0.0025, 0.001))
    return d


def _per_side_expression(F: _Fields, base: str, side: str) -> np.ndarray:
    """A component defined on each side of the face (mirrored); zero where `base` has no such definition."""
    p, my, mz, lam, up = F.p, F.my, F.mz, F.lam, F.up
    d = F.zero()
    for s in SIDES[side]:
        c = F.corner[s]
        if base == "smile":
            d += F.field(bump(p, c, (0.022, 0.018, 0.03)), (s * 0.0035, 0.0055, -0.0025))
            d += F.field(bump(p, (s * 0.036, -0.012, 0.068), (0.02, 0.02, 0.03)), (0, 0.0022, 0.0015))
        elif base == "frown":
            d += F.field(bump(p, c, (0.02, 0.02, 0.03)), (s * 0.001, -0.0055, -0.0005))
        elif base == "mouth_stretch" or base == "lips_stretch":
            d += F.field(bump(p, c, (0.022, 0.02, 0.03)), (s * 0.005, -0.0015 if base == "mouth_stretch" else -0.0025, -0.0015))
        elif base == "brow_inner_raise":
            d += F.field(bump(p, (s * 0.014, 0.051, 0.084), (0.018, 0.022, 0.03)), (0, 0.0065, 0.0005))
        elif base == "brow_outer_raise":
            d += F.field(bump(p, (s * 0.043, 0.048, 0.072), (0.018, 0.022, 0.03)), (0, 0.0065, 0.0))
        elif base == "brow_lower":
            d += F.field(bump(p, (s * 0.024, 0.049, 0.082), (0.028, 0.012, 0.03)), (-s * 0.0025, -0.0045, 0.001))
        elif base == "cheek_raise":
            d += F.field(bump(p, (s * 0.038, -0.006, 0.07), (0.02, 0.02, 0.03)), (s * 0.001, 0.004, 0.002))
        elif base == "nose_wrinkle":
            d += F.field(bump(p, (s * 0.010, 0.012, 0.092), (0.011, 0.013, 0.02)), (0, 0.003, -0.001))
        elif base in ("cheek_puff", "cheek_suck"):
            m = bump(p, (s * 0.042, -0.045, 0.06), (0.022, 0.025, 0.035))
            d += m[:, None] * F.n * (0.006 if base == "cheek_puff" else -0.005)
        elif base == "dimple":
            d += F.field(bump(p, c, (0.012, 0.012, 0.02)), (s * 0.0015, 0, -0.004))
        elif base == "nostril_flare":
            d += F.field(bump(p, (s * 0.017, -0.012, 0.089), (0.01, 0.01, 0.014)), (s * 0.003, 0.0005, 0))
        elif base in ("upper_lip_raise", "lower_lip_depress") and side != "both":
            if base == "upper_lip_raise":
                d += F.field(bump(p, (s * 0.012, my + 0.006, mz), (0.02, 0.016, 0.03)) * up, (0, 0.005, 0.001))
            else:
                d += F.field(bump(p, (s * 0.012, my - 0.008, mz), (0.02, 0.016, 0.03)) * lam, (0, -0.005, 0.0015))
        elif base == "sneer":
            d += F.field(bump(p, (s * 0.012, -0.008, 0.09), (0.015, 0.024, 0.03)) * up, (0, 0.0045, 0.0))
    return d


def _midline_expression(F: _Fields, base: str, name: str) -> np.ndarray:
    """A component defined once across the midline (both sides together)."""
    p, my, mz, lam, up = F.p, F.my, F.mz, F.lam, F.up
    d = F.zero()
    lips = bump(p, (0, my, mz - 0.006), (0.036, 0.022, 0.032))
    if base == "lips_pucker":
        d[:, 0] = -0.25 * p[:, 0] * lips
        d[:, 2] = 0.007 * lips
    elif base == "lips_funnel":
        d[:, 0] = -0.15 * p[:, 0] * lips
        d[:, 1] = (0.003 * up - 0.003 * lam) * lips
        d[:, 2] = 0.005 * lips
    elif base == "lips_press":
        m = bump(p, (0, my, mz), (0.032, 0.014, 0.025))
        d[:, 1] = -0.35 * (p[:, 1] - my) * m
        d[:, 2] = -0.003 * m
    elif base == "lips_tighten":
        d[:, 0] = -0.35 * p[:, 0] * lips
        d[:, 1] = -0.35 * (p[:, 1] - my) * lips
        d[:, 2] = -0.002 * lips
    elif base == "upper_lip_raise":
        d += F.field(bump(p, (0, my + 0.006, mz), (0.03, 0.016, 0.03)) * up, (0, 0.005, 0.001))
    elif base == "lower_lip_depress":
        d += F.field(bump(p, (0, my - 0.008, mz), (0.028, 0.016, 0.03)) * lam, (0, -0.005, 0.0015))
    elif base == "lips_part":
        m = bump(p, (0, my, mz), (0.026, 0.012, 0.03))
        d[:, 1] = (0.002 * up - 0.003 * lam) * m
    elif base in ("mouth_left", "mouth_right"):
        d += F.field(bump(p, (0, my, mz), (0.042, 0.026, 0.04)), (0.005 if base == "mouth_left" else -0.005, 0, 0))
    elif base == "lower_lip_roll_in":
        d += F.field(bump(p, (0, my - 0.006, mz), (0.025, 0.01, 0.02)) * lam, (0, 0.001, -0.004))
    elif base == "upper_lip_roll_in":
        d += F.field(bump(p, (0, my + 0.006, mz), (0.027, 0.01, 0.02)) * up, (0, -0.001, -0.004))
    elif base == "chin_raise":
        d += F.field(bump(p, (0, -0.078, 0.08), (0.026, 0.025, 0.03)), (0, 0.004, 0.002))
        d += F.field(bump(p, (0, my - 0.006, mz), (0.024, 0.012, 0.02)) * lam, (0, 0.0015, 0.002))
    elif base == "neck_tense":
        m = bump(p, (0, -0.115, 0.035), (0.045, 0.03, 0.03))
        d += m[:, None] * F.n * (0.0015 + 0.0025 * np.cos(2 * np.pi * p[:, 0] / 0.03) ** 2)[:, None]
    elif base == "forehead_wrinkle":
        m = bump(p, (0, 0.076, 0.08), (0.05, 0.03, 0.04))
        d += F.field(m, (0, 0.0025, 0))
        d += (m * 0.0012 * np.sin(2 * np.pi * (p[:, 1] - 0.06) / 0.009))[:, None] * F.n
    elif base == "chin_dimple":
        d += F.field(bump(p, (0, -0.08, 0.082), (0.008, 0.008, 0.015)), (0, 0, -0.0025))
    else:
        raise KeyError(f"no definition for expression component {name!r}")
    return d


def _identity(F: _Fields, name: str) -> np.ndarray:
    p, a = F.p, F.m.anatomy
    d = F.zero()
    if name == "head_width":
        d[:, 0] = 0.05 * p[:, 0]
    elif name == "face_length":
        d[:, 1] = 0.06 * np.minimum(p[:, 1] - a.eye_y, 0.0) * np.clip((p[:, 2] + 0.04) / 0.06, 0, 1)
    elif name == "nose_size":
        m = bump(p, (0, 0.0, 0.1), (0.022, 0.04, 0.03))
        d = 0.15 * (p - np.array([0, 0.01, 0.085])) * m[:, None]
    elif name == "nose_length":
        d += F.field(bump(p, (0, -0.006, 0.105), (0.015, 0.02, 0.02)), (0, -0.0025, 0.004))
    elif name == "jaw_width":
        m = bump(p, (0, -0.07, 0.01), (0.09, 0.045, 0.08))
        d[:, 0] = 0.07 * p[:, 0] * m
    elif name == "lip_fullness":
        m = bump(p, (0, F.my, F.mz), (0.028, 0.014, 0.02))
        d[:, 1] = 0.2 * (p[:, 1] - F.my) * m  # fuller lips grow away from the lip line, which stays closed
        d[:, 2] = 0.0025 * m
    elif name == "eye_spacing":
        for s in (1, -1):
            d += F.field(bump(p, a.eye_centre(s), (0.035, 0.035, 0.045)), (s * 0.0025, 0, 0))
    elif name == "brow_height":
        d += F.field(bump(p, (0, 0.05, 0.075), (0.07, 0.02, 0.04)), (0, 0.003, 0.0008))
    elif name == "cheek_fullness":
        m = bump(p, (0.045, -0.025, 0.055), (0.03, 0.035, 0.04)) + bump(p, (-0.045, -0.025, 0.055), (0.03, 0.035, 0.04))
        d += m[:, None] * F.n * 0.004
    elif name == "chin_length":
        d += F.field(bump(p, (0, -0.09, 0.06), (0.04, 0.035, 0.05)), (0, -0.004, 0.001))
    elif name == "forehead_height":
        d[:, 1] = 0.06 * np.maximum(p[:, 1] - 0.05, 0.0)
    elif name == "head_depth":
        d[:, 2] = 0.05 * np.minimum(p[:, 2] + 0.01, 0.0)
    elif name == "ear_size":
        for s in (1, -1):
            c = np.array([s * 0.072, 0.008, -0.014])
            d += 0.2 * (p - c) * bump(p, c, (0.03, 0.045, 0.035))[:, None]
    else:
        raise KeyError(f"no definition for identity component {name!r}")
    return d


def _attach_pockets(m: HeadMesh, d: np.ndarray, decay) -> np.ndarray:
    """Make the mouth pocket follow its lip line (ring k gets decay[k] of it) and the eye pockets their margin."""
    t = m.mouth
    for k in range(1, len(t.rings)):
        d[t.rings[k]] = d[t.rings[0]] * (decay[k - 1] if k - 1 < len(decay) else 0.0)
    d[t.cap] = d[t.rings[0]].mean(0) * (decay[-1] if len(decay) >= len(t.rings) else 0.0)
    return d


def expression_shapes(m: HeadMesh, normals, lam) -> np.ndarray:
    """[V,3,50] expression components in EXPRESSION_NAMES order."""
    F = _Fields(m, normals, lam)
    out = []
    for name in EXPRESSION_NAMES:
        d = _expression(F, name)
        lid_based = name in ("eyes_squint", "eyes_widen", "squint_left", "squint_right")
        if not lid_based:
            for tube in m.eyes.values():
                d[tube.rings[1:]] = d[tube.rings[0]][None]
        d = _attach_pockets(m, d, (1.0, 0.8, 0.4, 0.15))
        for ids in m.eyeballs.values():
            d[ids] = 0.0
        out.append(d)
    return np.stack(out, -1)


def identity_shapes(m: HeadMesh, normals, lam) -> np.ndarray:
    """[V,3,S] identity components in IDENTITY_NAMES order; each eye's assembly moves rigidly."""
    F = _Fields(m, normals, lam)
    a = m.anatomy
    out = []
    for name in IDENTITY_NAMES:
        d = _identity(F, name)
        d = _attach_pockets(m, d, (1.0,) * 9)
        for s, ids in m.eyeballs.items():
            c = a.eye_centre(s)
            dc = _identity(_Point(F, c), name)[0]
            rigid = np.clip(1 - (np.linalg.norm(m.verts - c, axis=1) - 0.019) / 0.012, 0, 1)
            rigid[ids] = 1.0
            d = d * (1 - rigid[:, None]) + rigid[:, None] * dc
        out.append(d)
    return np.stack(out, -1)


class _Point(_Fields):
    """The same fields evaluated at one point (an eyeball centre), for rigid eye motion."""

    def __init__(self, F: _Fields, point):
        self.m, self.my, self.mz, self.corner = F.m, F.my, F.mz, F.corner
        self.p = np.asarray(point, dtype=np.float64)[None]
        self.n = np.zeros((1, 3))
        self.lam = np.zeros(1)
        self.up = np.ones(1)
