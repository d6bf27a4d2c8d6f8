"""Per-vertex colour and named vertex regions of the procedural head.

Masks are smooth functions of rest positions (lip vermilion with a cupid's bow,
arched brows, a hairline), so colours blend across triangles instead of stepping.
"""

from __future__ import annotations

import numpy as np

from emotalker.core.head.rig import bump, smoothstep
from emotalker.core.head.surface import HeadMesh

SKIN_TONES = np.array([[0.92, 0.74, 0.63], [0.86, 0.66, 0.53], [0.76, 0.56, 0.42], [0.60, 0.42, 0.30], [0.42, 0.28, 0.20]])
IRIS_COLOURS = np.array([[0.36, 0.22, 0.12], [0.22, 0.38, 0.58], [0.30, 0.42, 0.26], [0.48, 0.36, 0.18], [0.18, 0.12, 0.08]])
HAIR_COLOURS = np.array([[0.12, 0.08, 0.06], [0.28, 0.18, 0.10], [0.45, 0.32, 0.18], [0.06, 0.05, 0.05], [0.55, 0.45, 0.32]])


def lip_mask(m: HeadMesh, lam: np.ndarray) -> np.ndarray:
    """[V] 1 on the lips' vermilion (cupid's bow on top, fuller below), 0 on skin, smooth at the border."""
    p = m.verts
    a = m.anatomy
    x, dy = p[:, 0], p[:, 1] - a.mouth_y
    am = np.abs(p[m.mouth.rings[0], 0]).max()  # the corners as built
    u = np.clip(np.abs(x) / (am + 0.0008), 0, 1)
    taper = np.sqrt(1 - u**2)
    bow = 0.0080 - 0.0010 * np.exp(-(x / 0.005) ** 2)
    h_up = bow * taper**0.8 + 0.0004
    h_lo = 0.0092 * taper**0.7 + 0.0004
    up = smoothstep((h_up - dy) / 0.0012) * (1 - lam)
    lo = smoothstep((h_lo + dy) / 0.0012) * lam
    front = smoothstep((p[:, 2] - (a.mouth_z - 0.02)) / 0.004)
    mask = np.clip(up + lo, 0, 1) * front * smoothstep((am + 0.001 - np.abs(x)) / 0.001)
    t = m.mouth
    mask[t.rings[1:3]] = 1.0
    return mask


def brow_mask(p: np.ndarray, eye_y: float) -> np.ndarray:
    """[V] arched eyebrows above both eyes (front of the face only)."""
    ax = np.abs(p[:, 0])
    t = np.clip((ax - 0.010) / 0.046, 0, 1)
    centre = eye_y + 0.0165 + 0.0045 * np.sin(np.pi * t**0.8) - 0.002 * t
    half = 0.0034 * (1 - 0.55 * t) + 0.0006
    inside = smoothstep((half - np.abs(p[:, 1] - centre)) / 0.0012)
    ends = smoothstep((ax - 0.008) / 0.004) * smoothstep((0.058 - ax) / 0.005)
    return inside * ends * smoothstep((p[:, 2] - 0.045) / 0.01)


def hair_mask(p: np.ndarray) -> np.ndarray:
    """[V] a short-haired scalp: hairline high on the forehead, down at the temples, to the nape."""
    q = p - np.array([0.0, 0.02, -0.01])
    elev = np.arctan2(q[:, 1], np.hypot(q[:, 0], q[:, 2]))
    az = np.abs(np.arctan2(q[:, 0], q[:, 2]))  # 0 front, pi back
    line = np.interp(az, [0, 0.6, 1.1, 1.45, 1.75, 2.2, np.pi], [0.72, 0.66, 0.42, 0.30, 0.35, -0.35, -0.55])
    ears = 1 - smoothstep(1 - ((np.abs(p[:, 0]) - 0.072) / 0.02) ** 2 - ((p[:, 1] - 0.008) / 0.036) ** 2 - ((p[:, 2] + 0.014) / 0.026) ** 2)
    return smoothstep((elev - line) / 0.06) * np.maximum(ears, smoothstep((elev - 0.55) / 0.05))


def _noise(p: np.ndarray, rng: np.random.Generator, octaves: int = 6) -> np.ndarray:
    """[V] smooth pseudo-random variation in about -1..1 from a sum of random plane waves."""
    out = np.zeros(len(p))
    for k in range(octaves):
        freq = rng.normal(size=3)
        freq *= (40.0 + 50.0 * k) / np.linalg.norm(freq)
        out += np.sin(p @ freq + rng.uniform(0, 2 * np.pi)) / (1 + k)
    return out / 2.5


def albedo_and_regions(m: HeadMesh, lam: np.ndarray, eyelid_shapes: np.ndarray, seed: int):
    """Per-vertex albedo [V,3] in 0..1 and regions {name: vertex ids}."""
    rng = np.random.default_rng([seed, 7])
    p = m.verts
    a = m.anatomy
    V = len(p)
    skin_tone = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.95, 1.05, 3)
    iris = IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))] * rng.uniform(0.85, 1.15, 3)
    hair = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))]

    col = np.tile(skin_tone, (V, 1)) * (1 + 0.045 * _noise(p, rng))[:, None]
    flush = bump(p, (0.036, -0.01, 0.07), (0.025, 0.022, 0.03)) + bump(p, (-0.036, -0.01, 0.07), (0.025, 0.022, 0.03))
    flush += 0.3 * bump(p, (0, -0.006, 0.108), (0.012, 0.012, 0.015))
    col = col * (1 - 0.12 * flush[:, None]) + 0.12 * flush[:, None] * skin_tone * np.array([1.15, 0.75, 0.72])
    lids = sum(bump(p, a.eye_centre(s) + [0, 0.006, 0.006], (0.02, 0.012, 0.02)) for s in (1, -1))
    col *= (1 - 0.12 * lids)[:, None]
    lips = lip_mask(m, lam)
    lip_col = skin_tone * np.array([0.92, 0.55, 0.55])
    col = col * (1 - lips[:, None]) + lips[:, None] * lip_col
    brows = brow_mask(p, a.eye_y)
    brow_col = hair * 0.9 + 0.02
    col = col * (1 - 0.9 * brows[:, None]) + 0.9 * brows[:, None] * brow_col
    hm = hair_mask(p)
    col = col * (1 - hm[:, None]) + hm[:, None] * hair * (1 + 0.15 * _noise(p * 3.0, rng, 3))[:, None]
    nostrils = sum(bump(p, (s * 0.0068, -0.0155, 0.093), (0.0042, 0.0022, 0.006)) for s in (1, -1))
    col *= (1 - 0.75 * np.clip(nostrils, 0, 1))[:, None]
    neck_shadow = smoothstep((-0.11 - p[:, 1]) / 0.04)
    col *= (1 - 0.12 * neck_shadow)[:, None]

    t = m.mouth
    inner = t.rings[3:].reshape(-1)
    depth = np.clip((a.mouth_z - p[inner, 2]) / 0.05, 0, 1)
    col[inner] = np.array([0.55, 0.18, 0.18]) * (1 - 0.6 * depth)[:, None]
    tongue = inner[(lam[inner] > 0.5) & (np.abs(p[inner, 0]) < 0.016)]
    col[tongue] = np.array([0.72, 0.33, 0.33]) * (1 - 0.5 * np.clip((a.mouth_z - p[tongue, 2]) / 0.05, 0, 1))[:, None]
    col[t.cap] = [0.12, 0.03, 0.03]
    col[t.rings[2]] = lip_col * 0.8
    for tube in m.eyes.values():
        col[tube.rings[1:].reshape(-1)] = [0.55, 0.25, 0.25]
        col[tube.cap] = [0.3, 0.1, 0.1]
    for s, ids in m.eyeballs.items():
        q = p[ids] - a.eye_centre(s)
        ang = np.arccos(np.clip(q[:, 2] / a.eye_r, -1, 1))
        sclera = np.array([0.93, 0.91, 0.87])
        c = np.where((ang < 0.52)[:, None], iris * (0.8 + 0.4 * smoothstep((ang - 0.2) / 0.3))[:, None], sclera)
        c[(ang > 0.46) & (ang < 0.53)] = iris * 0.45
        c[ang < 0.17] = [0.03, 0.03, 0.03]
        col[ids] = c

    skin = np.zeros(V, bool)
    skin[m.skin_verts] = True
    front = p[:, 2] > 0.02
    eyelid = skin & (np.abs(eyelid_shapes).sum((0, 2)) > 1e-7)
    regions = {
        "lips": np.flatnonzero(skin & (lips > 0.5)),
        "lips_upper": np.flatnonzero(skin & (lips > 0.5) & (lam < 0.5)),
        "lips_lower": np.flatnonzero(skin & (lips > 0.5) & (lam >= 0.5)),
        "mouth_interior": np.concatenate([t.rings[3:].reshape(-1), [t.cap]]),
        "eyes": np.concatenate(list(m.eyeballs.values())),
        "eye_left": m.eyeballs[1],
        "eye_right": m.eyeballs[-1],
        "eyelids": np.flatnonzero(eyelid),
        "brows": np.flatnonzero(skin & (brows > 0.4)),
        "cheeks": np.flatnonzero(skin & front & ((bump(p, (0.042, -0.02, 0.06), (0.025, 0.03, 0.04)) + bump(p, (-0.042, -0.02, 0.06), (0.025, 0.03, 0.04))) > 0.05)),
        "forehead": np.flatnonzero(skin & front & (p[:, 1] > a.eye_y + 0.022) & (hm < 0.5) & (brows < 0.2)),
        "nose": np.flatnonzero(skin & (bump(p, (0, 0.004, 0.1), (0.02, 0.036, 0.028)) > 0.02)),
        "chin": np.flatnonzero(skin & (bump(p, (0, -0.082, 0.074), (0.022, 0.018, 0.02)) > 0.05)),
        "neck": np.flatnonzero(skin & (p[:, 1] + 0.35 * p[:, 2] < -0.095)),
        "ears": np.flatnonzero(skin & (np.abs(p[:, 0]) > 0.068) & (np.abs(p[:, 1] - 0.008) < 0.03) & (np.abs(p[:, 2] + 0.014) < 0.02)),
        "scalp": np.flatnonzero(skin & (hm > 0.5)),
    }
    return np.clip(col, 0, 1), regions
