"""The procedural head's mesh: a (theta, phi) grid projected onto the SDF, with slits and pockets.

The skin is one closed grid around a ray centre (a pole at the crown, a pole at the
centre of the neck base). Two rows are pulled together across the mouth and pushed
apart across each eye, the quads between them are removed, and each slit is
closed by a tube of rings running inward (the mouth cavity, the conjunctival
pocket behind each eyeball) that ends in a cap, so the skin stays a closed,
consistently wound surface. Eyeballs are separate closed spheres.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emotalker.core.head.sdf import Anatomy, direction, project_rays


@dataclass(frozen=True)
class GridConfig:
    rows: int = 92  # rings between the two poles
    cols: int = 120  # even, so the grid is mirror-symmetric about x = 0
    face_density: float = 1.6  # how much finer the face is sampled than the back of the head
    eyeball_rings: tuple = (0.07, 0.14, 0.21, 0.28, 0.35, 0.42, 0.49, 0.53, 0.58, 0.70, 0.9, 1.15, 1.45, 1.8, 2.2, 2.6, 2.95)
    eyeball_segments: int = 28


@dataclass
class Tube:
    """A slit's pocket: rings [K+1, L] of vertex ids (ring 0 is the slit's loop) and a cap vertex.

    side [L]: +1 on the upper half of the loop, -1 on the lower; u [L]: position along the slit, -1..1.
    """

    rings: np.ndarray
    cap: int
    side: np.ndarray
    u: np.ndarray


@dataclass
class HeadMesh:
    verts: np.ndarray  # [V,3]
    faces: np.ndarray  # [F,3]; the first n_skin_faces are the closed skin
    n_skin_faces: int
    n_rows: int
    n_cols: int
    mouth_row: int  # the upper lip line; mouth_row + 1 is the lower
    eye_row: int  # the upper lid margin; eye_row + 1 is the lower
    mouth_cols: np.ndarray  # core columns of the slit, ordered by x
    eye_cols: dict  # side (+1 left, -1 right) -> core columns ordered by x
    mouth: Tube
    eyes: dict  # side -> Tube
    eyeballs: dict  # side -> vertex ids
    grid_row: np.ndarray  # [V] row of a grid vertex, -1 elsewhere
    grid_col: np.ndarray  # [V]
    anatomy: Anatomy = field(default_factory=Anatomy)

    def grid_id(self, i, j):
        return np.asarray(i) * self.n_cols + np.asarray(j) % self.n_cols

    @property
    def skin_verts(self) -> np.ndarray:
        """Ids of every vertex on the closed skin (all but the eyeballs)."""
        eye = np.concatenate(list(self.eyeballs.values()))
        keep = np.ones(len(self.verts), bool)
        keep[eye] = False
        return np.flatnonzero(keep)


def _inverse_cdf(x, density, n):
    """n samples of x spaced evenly in the cumulative `density` (both [M]); endpoints excluded."""
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(x))])
    return np.interp(np.linspace(0, cdf[-1], n + 2)[1:-1], cdf, x)


def _sample_rows(cfg: GridConfig, a: Anatomy) -> np.ndarray:
    """Polar angles of the rings, by arc length along front, side and back profiles, finer on the face."""
    th = np.linspace(1e-3, np.pi - 1e-3, 700)
    seg = []
    for phi in (0.0, np.pi / 2, np.pi):
        p = project_rays(direction(th, np.full_like(th, phi)), a)
        ds = np.linalg.norm(np.gradient(p, th, axis=0), axis=1)
        seg.append((ds, p))
    (ds_f, pf), (ds_s, _), (ds_b, _) = seg
    face = np.clip((pf[:, 1] + 0.115) / 0.012, 0, 1) * np.clip((0.075 - pf[:, 1]) / 0.012, 0, 1)
    density = (0.55 * ds_f + 0.3 * ds_s + 0.15 * ds_b) * (1.0 + (cfg.face_density - 1.0) * face)
    return _inverse_cdf(th, density, cfg.rows)


def _sample_cols(cfg: GridConfig, a: Anatomy, theta_eye: float) -> np.ndarray:
    """Azimuths of the columns, mirror-symmetric, finer across the face."""
    ph = np.linspace(0.0, np.pi, 500)
    p = project_rays(direction(np.full_like(ph, theta_eye), ph), a)
    ds = np.linalg.norm(np.gradient(p, ph, axis=0), axis=1)
    density = ds * (1.0 + (cfg.face_density - 1.0) * np.clip((np.cos(ph) - 0.2) / 0.3, 0, 1))
    half = cfg.cols // 2
    inner = _inverse_cdf(ph, density, half - 1)
    right = np.concatenate([[0.0], inner, [np.pi]])  # columns 0..half
    return np.concatenate([right, -right[1:-1][::-1] + 2 * np.pi])  # 0 .. 2pi, symmetric


def _solve_theta(phi, y_target, lo, hi, a: Anatomy, iters: int = 18):
    """Per column: theta in [lo, hi] whose skin point has height y_target (y falls as theta grows)."""
    lo, hi = lo.copy(), hi.copy()
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        y = project_rays(direction(mid, phi), a, iters=14)[:, 1]
        above = y > y_target
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    return 0.5 * (lo + hi)


def _open_slit(theta, phi, pos, row, core, y_up, y_lo, a: Anatomy, fade: int = 3, window: int = 4):
    """Move rows `row` (upper edge) and `row+1` (lower edge) to y_up(x) / y_lo(x) over `core` columns.

    theta [R,C] is edited in place; rows within `window` of the slit are re-spaced
    evenly, and `fade` columns beyond each end blend back to the untouched grid.
    """
    C = theta.shape[1]
    ext = np.concatenate([core[0] - np.arange(fade, 0, -1), core, core[-1] + np.arange(1, fade + 1)]) % C
    dist = np.concatenate([np.arange(fade, 0, -1), np.zeros(len(core)), np.arange(1, fade + 1)])
    f = 0.5 * (1 + np.cos(np.pi * dist / (fade + 1)))
    x = pos[row, ext, 0]
    top, bot = row - window, row + 1 + window
    ph = phi[ext]
    t_up = _solve_theta(ph, y_up(x), theta[top, ext], theta[bot, ext], a)
    t_lo = _solve_theta(ph, y_lo(x), theta[top, ext], theta[bot, ext], a)
    s = np.linspace(0, 1, window + 1)[:, None]
    above = theta[top, ext] + (t_up - theta[top, ext]) * s  # rows top..row
    below = t_lo + (theta[bot, ext] - t_lo) * s  # rows row+1..bot
    new = np.concatenate([above, below], 0)
    theta[top : bot + 1, ext] = f * new + (1 - f) * theta[top : bot + 1, ext]


def _core_columns(pos_row, phi, keep) -> np.ndarray:
    """Contiguous columns where keep(x) holds on the front, ordered by x."""
    front = np.cos(phi) > 0.3
    cols = np.flatnonzero(front & keep(pos_row[:, 0]))
    return cols[np.argsort(pos_row[cols, 0])]


def _bridge(rings, cap):
    """Faces joining consecutive closed rings [K+1, L] and a fan to `cap`, wound to match the slit."""
    K1, L = rings.shape
    a = np.arange(L)
    b = (a + 1) % L
    faces = []
    for k in range(K1 - 1):
        r0, r1 = rings[k], rings[k + 1]
        faces.append(np.stack([r0[b], r0[a], r1[a]], 1))
        faces.append(np.stack([r0[b], r1[a], r1[b]], 1))
    faces.append(np.stack([rings[-1][b], rings[-1][a], np.full(L, cap)], 1))
    return np.concatenate(faces)


def _eyeball(centre, r, cfg: GridConfig):
    """A UV sphere with its pole on the gaze axis (+Z), rings denser around the iris. -> verts, faces (local ids)."""
    ang = np.asarray(cfg.eyeball_rings)
    n = cfg.eyeball_segments
    az = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rings = np.stack([np.sin(ang)[:, None] * np.cos(az), np.sin(ang)[:, None] * np.sin(az), np.cos(ang)[:, None] * np.ones(n)], -1)
    verts = np.concatenate([[[0, 0, 1.0]], rings.reshape(-1, 3), [[0, 0, -1.0]]]) * r + centre
    nr = len(ang)
    idx = 1 + np.arange(nr * n).reshape(nr, n)
    j, j1 = np.arange(n), (np.arange(n) + 1) % n
    faces = [np.stack([np.zeros(n, int), idx[0, j], idx[0, j1]], 1)]
    for k in range(nr - 1):
        faces += [np.stack([idx[k, j], idx[k + 1, j], idx[k + 1, j1]], 1), np.stack([idx[k, j], idx[k + 1, j1], idx[k, j1]], 1)]
    last = 1 + nr * n
    faces.append(np.stack([np.full(n, last), idx[-1, j1], idx[-1, j]], 1))
    return verts, np.concatenate(faces)


class _Parts:
    """The mesh's vertex blocks and face blocks, appended in order; vertex ids count across blocks."""

    def __init__(self):
        self.verts: list[np.ndarray] = []
        self.faces: list[np.ndarray] = []
        self.n_verts = 0

    def add_verts(self, points) -> np.ndarray:
        """Append points [N,3]; -> their vertex ids [N]."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        ids = np.arange(self.n_verts, self.n_verts + len(points))
        self.verts.append(points)
        self.n_verts += len(points)
        return ids

    @property
    def n_faces(self) -> int:
        return sum(len(f) for f in self.faces)


# The mouth pocket's rings behind its slit, outside in: two rings of inner lip that follow the
# lips' shape, then the cavity's elliptic rings. (kind, x scale (lip) or half width (cavity),
# vertical reach, depth behind the lip line, backward arch towards the corners).
_MOUTH_RINGS = (
    ("lip", 0.97, 0.0024, 0.0040, 0.0),
    ("lip", 0.93, 0.0058, 0.0090, 0.002),
    ("cav", 0.0225, 0.0105, 0.0150, 0.010),
    ("cav", 0.0255, 0.0132, 0.0230, 0.012),
    ("cav", 0.0260, 0.0140, 0.0320, 0.013),
    ("cav", 0.0240, 0.0130, 0.0410, 0.012),
    ("cav", 0.0195, 0.0105, 0.0480, 0.010),
    ("cav", 0.0120, 0.0070, 0.0530, 0.006),
)
_EYE_HALF_WIDTH = 0.0138  # half the eye slit's width along x


def _grid_angles(cfg: GridConfig, a: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Polar angles of the rows [R] and azimuths of the columns [C], the columns sampled at the eyes' height."""
    th_fine = np.linspace(0.3, 2.0, 400)
    y_fine = project_rays(direction(th_fine, np.zeros_like(th_fine)), a)[:, 1]
    theta_eye = float(np.interp(-a.eye_y, -y_fine, th_fine))
    return _sample_rows(cfg, a), _sample_cols(cfg, a, theta_eye)


def _row_above(pos, y: float) -> int:
    """The lowest row whose midline point lies above height y."""
    return int(np.flatnonzero(pos[:, 0, 1] > y)[-1])


def _lip_lines(a: Anatomy, half_width: float):
    """Heights of the upper and lower lip edge along x: a thin slit whose corners curve up."""

    def upper(x):
        u = np.clip(x / half_width, -1, 1)
        return a.mouth_y + 0.00015 + 0.0003 * (1 - u * u) + 0.0006 * u * u

    def lower(x):
        u = np.clip(x / half_width, -1, 1)
        return a.mouth_y - 0.00015 - 0.0003 * (1 - u * u) + 0.0006 * u * u

    return upper, lower


def _lid_margins(a: Anatomy, x0: float, x1: float):
    """Heights of the upper and lower lid margin along x, from the inner corner |x| = x0 to the outer x1: an almond."""

    def along(x):
        return np.clip((np.abs(x) - x0) / (x1 - x0), 0, 1)

    def upper(x):
        t = along(x)
        return a.eye_y - 0.0008 + 0.0016 * t + 0.00025 + 0.0052 * np.sin(np.pi * t**0.88) ** 0.75

    def lower(x):
        t = along(x)
        return a.eye_y - 0.0008 + 0.0016 * t - 0.00025 - 0.0039 * np.sin(np.pi * t**1.1) ** 0.9

    return upper, lower


def _open_mouth(theta, phi, pos, a: Anatomy):
    """Open the mouth slit on the two rows around the lip line (theta edited in place).

    -> (upper row, core columns ordered by x, the slit's half width).
    """
    row = _row_above(pos, a.mouth_y)
    cols = _core_columns(pos[row], phi, lambda x: np.abs(x) <= a.mouth_half_width)
    half_width = np.abs(pos[row, cols, 0]).max()
    _open_slit(theta, phi, pos, row, cols, *_lip_lines(a, half_width), a)
    return row, cols, half_width


def _open_eyes(theta, phi, pos, a: Anatomy):
    """Open the two almond eye slits on the rows around the eyes' height (theta edited in place).

    -> (upper row, {side: core columns ordered by x}).
    """
    row = _row_above(pos, a.eye_y)
    eye_cols = {}
    for side in (1, -1):
        cols = _core_columns(pos[row], phi, lambda x: np.abs(side * x - a.eye_x) <= _EYE_HALF_WIDTH)
        ax = np.abs(pos[row, cols, 0])
        _open_slit(theta, phi, pos, row, cols, *_lid_margins(a, ax.min(), ax.max()), a)
        eye_cols[side] = cols
    return row, eye_cols


def _reproject_moved(theta, theta_rows, phi, pos, a: Anatomy) -> np.ndarray:
    """The grid's points [R*C,3], re-projecting only the rays the slits moved."""
    grid = pos.reshape(-1, 3).copy()
    moved = np.flatnonzero((theta != theta_rows[:, None]).reshape(-1))
    grid[moved] = project_rays(direction(theta.reshape(-1)[moved], np.broadcast_to(phi, theta.shape).reshape(-1)[moved]), a)
    return grid


def _grid_faces(R: int, C: int, top, bottom, slits) -> list[np.ndarray]:
    """The grid's faces (outward winding) and the fans to the two poles, minus the quads inside each slit.

    slits: (upper row, core columns) of each slit.
    """
    i, j = np.meshgrid(np.arange(R - 1), np.arange(C), indexing="ij")
    keep = np.ones((R - 1, C), bool)
    for row, cols in slits:
        keep[row, cols[:-1]] = False
    i, j = i[keep], j[keep]
    v00, v01 = i * C + j, i * C + (j + 1) % C
    v10, v11 = (i + 1) * C + j, (i + 1) * C + (j + 1) % C
    jj = np.arange(C)
    last = (R - 1) * C
    return [
        np.stack([v00, v10, v11], 1),
        np.stack([v00, v11, v01], 1),
        np.stack([np.full(C, top), jj, (jj + 1) % C], 1),
        np.stack([np.full(C, bottom), last + (jj + 1) % C, last + jj], 1),
    ]


def _slit_loop(row: int, cols, C: int):
    """A slit's closed loop of grid ids (upper edge along x, lower edge back) and its side (+1 upper, -1 lower)."""
    ids = np.concatenate([row * C + cols, (row + 1) * C + cols[::-1]])
    side = np.concatenate([np.ones(len(cols)), -np.ones(len(cols))])
    return ids, side


def _mouth_pocket(parts: _Parts, grid, ids, side, half_width: float, a: Anatomy) -> Tube:
    """The mouth's tube from its slit: inner lip, behind the lips, then the cavity, closed at the back."""
    p0 = grid[ids]
    u = np.clip(p0[:, 0] / half_width, -1, 1)
    bulge = np.sqrt(np.clip(1 - u * u, 0, 1))
    yc = a.mouth_y - 0.0015
    rings = [ids]
    for kind, sx, reach, depth, arch in _MOUTH_RINGS:
        if kind == "lip":
            q = np.stack([p0[:, 0] * sx, p0[:, 1] + side * reach * bulge, p0[:, 2] - depth - arch * u * u], 1)
        else:
            vy = reach * (0.08 + 0.92 * bulge)
            q = np.stack([u * sx, yc + side * vy, np.full_like(u, a.mouth_z - depth) - arch * u * u], 1)
        rings.append(parts.add_verts(q))
    cap = int(parts.add_verts([0.0, yc, a.mouth_z - 0.057])[0])
    tube = Tube(np.stack(rings), cap, side, u)
    parts.faces.append(_bridge(tube.rings, cap))
    return tube


def _eye_pocket(parts: _Parts, grid, ids, side, centre, a: Anatomy) -> Tube:
    """An eye's tube from its lid margin: just under the eyeball's surface, shrinking behind it."""
    p0 = grid[ids]
    dvec = (p0 - centre) / np.linalg.norm(p0 - centre, axis=1, keepdims=True)
    rings = [ids]
    for scale in ((a.eye_r - 0.0004), 0.8 * a.eye_r, 0.55 * a.eye_r, 0.3 * a.eye_r):
        q = centre + dvec * scale
        q[:, 2] -= 0.25 * (a.eye_r - scale)
        rings.append(parts.add_verts(q))
    cap = int(parts.add_verts(centre - [0, 0, 0.004])[0])
    ax = np.abs(p0[:, 0])
    tube = Tube(np.stack(rings), cap, side, 2 * (ax - ax.min()) / (ax.max() - ax.min()) - 1)
    parts.faces.append(_bridge(tube.rings, cap))
    return tube


def _add_eyeballs(parts: _Parts, cfg: GridConfig, a: Anatomy) -> dict:
    """Both eyeballs as separate closed spheres; -> side -> vertex ids."""
    eyeballs = {}
    for s in (1, -1):
        ev, ef = _eyeball(a.eye_centre(s), a.eye_r, cfg)
        eyeballs[s] = parts.add_verts(ev)
        parts.faces.append(ef + eyeballs[s][0])
    return eyeballs


def _grid_index(R: int, C: int, V: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column [V] of each grid vertex (the first R*C), -1 for every other vertex."""
    grid_row = np.full(V, -1)
    grid_col = np.full(V, -1)
    grid_row[: R * C] = np.repeat(np.arange(R), C)
    grid_col[: R * C] = np.tile(np.arange(C), R)
    return grid_row, grid_col


def build_head_mesh(cfg: GridConfig = GridConfig(), a: Anatomy = Anatomy()) -> HeadMesh:
    """Sample the SDF into the closed skin with mouth and eye pockets, plus two eyeballs."""
    R, C = cfg.rows, cfg.cols
    theta_rows, phi = _grid_angles(cfg, a)
    theta = np.repeat(theta_rows[:, None], C, 1)
    pos = project_rays(direction(theta, phi[None, :]).reshape(-1, 3), a).reshape(R, C, 3)
    mouth_row, mouth_cols, mouth_half_width = _open_mouth(theta, phi, pos, a)
    eye_row, eye_cols = _open_eyes(theta, phi, pos, a)

    parts = _Parts()
    grid = _reproject_moved(theta, theta_rows, phi, pos, a)
    parts.add_verts(grid)
    top, bottom = parts.add_verts(project_rays(np.array([[0, 1.0, 0], [0, -1.0, 0]]), a))
    slits = [(mouth_row, mouth_cols)] + [(eye_row, cols) for cols in eye_cols.values()]
    parts.faces += _grid_faces(R, C, top, bottom, slits)
    mouth = _mouth_pocket(parts, grid, *_slit_loop(mouth_row, mouth_cols, C), mouth_half_width, a)
    eyes = {s: _eye_pocket(parts, grid, *_slit_loop(eye_row, cols, C), a.eye_centre(s), a) for s, cols in eye_cols.items()}
    n_skin_faces = parts.n_faces
    eyeballs = _add_eyeballs(parts, cfg, a)
    grid_row, grid_col = _grid_index(R, C, parts.n_verts)
    return HeadMesh(
        verts=np.concatenate(parts.verts), faces=np.concatenate(parts.faces).astype(np.int64),
        n_skin_faces=n_skin_faces, n_rows=R, n_cols=C, grid_row=grid_row, grid_col=grid_col,
        mouth_row=mouth_row, mouth_cols=mouth_cols, mouth=mouth,
        eye_row=eye_row, eye_cols=eye_cols, eyes=eyes, eyeballs=eyeballs,
        anatomy=a,
    )
