"""Where mediapipe's landmarks sit on a FLAME-format rig, found by rendering the rig itself.

No hand-made correspondence is needed, so this works for the procedural head and for a
converted FLAME model alike. The rig's template, with the jaw a little open (JAW_OPEN, so
that each lip's inner contour lands on its own lip), is drawn with its albedo from a few
views by `mesh_preview`'s rasteriser; FaceMesh finds the 478 landmarks on each render, and
each landmark pixel is cast back onto the mesh through the rasteriser's face id and
barycentrics (through the front surface when it lies on a depth edge). Per landmark the
views vote: the median of the 3D hits, the hits near it kept (the weight is the share of
views that agree), then the surface point nearest their mean becomes a (triangle,
barycentric) pair, which holds in every pose. Landmarks the views do not agree on (parts of
the face oval, points some views see only edge-on) are dropped. The result is cached beside
the rig, keyed by a hash of the rig's arrays.

The embedding also carries how FaceMesh reports the points' motion under each expression
coefficient and eyelid (`response`, measured on renders of the rig by `track.response`): the fit
predicts that, not the mesh's own motion, which FaceMesh under-reports.

A rig without an albedo is drawn grey; FaceMesh still finds it, less precisely (irises above all).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emotalker.core.base.errors import InputError
from emotalker.core.rig.flame import FlameModel
from emotalker.track.landmarks import N_LANDMARKS

FORMAT = "emotalker-landmark-embedding/1"
# Part of the cache key: bump it when the views or the voting change, so old caches are redone.
METHOD_VERSION = 2  # 2: the detector's response to the expression
RESOLUTION = 512
# (yaw, pitch) in degrees of the camera around the head: frontal first; small angles, where FaceMesh
# is sure of the whole face, outnumber the wider ones that mostly help the cheeks and the jaw line.
VIEWS = ((0, 0), (-15, 0), (15, 0), (0, -12), (0, 12), (-10, -10), (10, 10), (-30, 5), (30, 5))
# The expression's response is measured in the first five: the frontal view and a turn each way in yaw
# and in pitch, which pin down all three directions of a point's motion. All nine fitted the benchmark's
# held-out clips no better (landmarks 1.76 px from the truth against 1.73) for twice the renders.
RESPONSE_VIEWS = 5
AGREE = 0.012  # hits within this fraction of the head's bounding-box diagonal of the median agree
MIN_AGREE = 0.5  # a landmark needs this share of the views that found the face to agree
# The template is rendered with the jaw this far open (radians): with the lips apart the inner-lip
# landmarks of the lower lip land on the lower lip, not on the upper one they touch at rest.
# 0.05: at 0.03 two of them still took the upper lip; 0.07 and 0.1 fitted the sample's frames a little worse.
JAW_OPEN = 0.05
BACKGROUND = (0.5, 0.5, 0.5)
EDGE_PX, EDGE_DEPTH = 3, 0.004  # a landmark this many pixels from a depth step of this many metres is on an edge


@dataclass
class LandmarkEmbedding:
    """Landmarks bound to rig triangles.

    landmark [L] int64: the mediapipe index of each embedded point; face [L] int64: its rig
    triangle; vertex_ids [L,3] int64: that triangle's vertices (the rig's faces[face]);
    bary [L,3] float32: barycentric weights; weight [L] float32 in 0..1: the share of the views
    that agree on the point. `key` is the hash of the rig arrays it was made from. A track's
    detections that match `points(vertices)` are `track.points[:, emb.landmark]`.
    response [L,3,E+2] float32 or None: each point's rest-space motion per unit of each expression
    coefficient, then each eyelid, as FaceMesh reports it (None: as the mesh moves).
    """

    landmark: np.ndarray
    face: np.ndarray
    vertex_ids: np.ndarray
    bary: np.ndarray
    weight: np.ndarray
    key: str = ""
    response: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.landmark.shape[0])

    def points(self, vertices):
        """The embedded points on posed vertices: [B,V,3] -> [B,L,3] (torch, differentiable)."""
        import torch

        ids = torch.as_tensor(self.vertex_ids, device=vertices.device)
        w = torch.as_tensor(self.bary, dtype=vertices.dtype, device=vertices.device)
        return (vertices[:, ids] * w[None, :, :, None]).sum(2)

    def index_of(self, landmarks) -> np.ndarray:
        """Rows of this embedding for the given mediapipe indices (those embedded, in the order given)."""
        row = {int(k): i for i, k in enumerate(self.landmark)}
        return np.array([row[int(k)] for k in np.asarray(landmarks).ravel() if int(k) in row], np.int64)

    def save(self, path: str | os.PathLike) -> None:
        """Write an npz atomically (no pickled objects)."""
        from emotalker.core.base.fileio import atomic_path

        extra = {} if self.response is None else {"response": self.response.astype(np.float32)}
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, format=np.array(FORMAT), key=np.array(self.key),
                                    landmark=self.landmark.astype(np.int64), face=self.face.astype(np.int64),
                                    vertex_ids=self.vertex_ids.astype(np.int64), bary=self.bary.astype(np.float32),
                                    weight=self.weight.astype(np.float32), **extra)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LandmarkEmbedding":
        """Read what `save` wrote; InputError naming the file on any problem."""
        from emotalker.core.base.fileio import read_npz

        data = read_npz(path, "landmark embedding")
        names = ("landmark", "face", "vertex_ids", "bary", "weight")
        if str(data.get("format", "")) != FORMAT or not set(names) <= data.keys():
            raise InputError(path, f"not an {FORMAT} file")
        L = data["landmark"].shape[0]
        shapes = {"landmark": (L,), "face": (L,), "vertex_ids": (L, 3), "bary": (L, 3), "weight": (L,)}
        for name, shape in shapes.items():
            if data[name].shape != shape:
                raise InputError(path, f"{name} has shape {list(data[name].shape)}, expected {list(shape)}")
        if L and not (0 <= data["landmark"].min() and data["landmark"].max() < N_LANDMARKS
                      and np.isfinite(data["bary"]).all() and np.isfinite(data["weight"]).all()):
            raise InputError(path, "landmark indices out of range or non-finite weights")
        response = data.get("response")
        if response is not None and (response.ndim != 3 or response.shape[:2] != (L, 3)
                                     or not np.isfinite(response).all()):
            raise InputError(path, f"response has shape {list(response.shape)} (expected [{L}, 3, n]) or is not finite")
        return cls(data["landmark"].astype(np.int64), data["face"].astype(np.int64),
                   data["vertex_ids"].astype(np.int64), data["bary"].astype(np.float32),
                   data["weight"].astype(np.float32), key=str(data.get("key", "")),
                   response=None if response is None else response.astype(np.float32))


def rig_key(model: FlameModel) -> str:
    """A hash of what the embedding depends on: the template, the triangles, the albedo, the expression
    and eyelid bases (the response) and the method."""
    from emotalker.track import response

    settings = (FORMAT, METHOD_VERSION, RESOLUTION, VIEWS, AGREE, MIN_AGREE, JAW_OPEN, EDGE_PX, EDGE_DEPTH,
                RESPONSE_VIEWS, response.AMPLITUDE, response.PULL, response.MOVES, response.MIN_VIEWS)
    h = hashlib.sha256(repr(settings).encode())
    # the skinning too: the template is rendered with the jaw open
    for a in (model.v_template, model.faces, model.albedo, model.weights, model.J_regressor, model.kintree_table,
              model.posedirs, model.shapedirs[:, :, model.n_shape:], model.eyelids):
        a = np.zeros(0) if a is None else np.ascontiguousarray(a)
        h.update(f"{a.dtype} {a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cache_path(rig_path: str | os.PathLike) -> Path:
    """`flame_model.npz` -> `flame_model.landmarks.npz` beside it."""
    rig_path = Path(rig_path)
    return rig_path.with_name(rig_path.name.removesuffix(".npz") + ".landmarks.npz")


def landmark_embedding(model: FlameModel, rig_path: str | os.PathLike | None = None,
                       progress=None) -> LandmarkEmbedding:
    """The rig's landmark embedding: read from `<rig>.landmarks.npz` when its key matches the
    rig, else made (about 20 s for the procedural head) and written there. No rig_path: made, not cached; a folder
    that cannot be written to is not an error (the embedding is just made again next time).
    progress: None, a Progress mode ("bar", "json", "none") or an object with update(n), per render."""
    key = rig_key(model)
    cache = None if rig_path is None else cache_path(rig_path)
    if cache is not None and cache.is_file():
        try:
            emb = LandmarkEmbedding.load(cache)
            if emb.key == key:
                return emb
        except InputError:
            pass  # a damaged or foreign cache is remade
    emb = make_embedding(model, progress=progress, source=rig_path)
    emb.key = key
    if cache is not None:
        try:
            emb.save(cache)
        except OSError:
            pass
    return emb


# ---------------------------------------------------------------------------
# Making it
# ---------------------------------------------------------------------------


def posed_template(model: FlameModel, expr=None, eyelids=None) -> np.ndarray:
    """The template's vertices [V,3] (float64) with the jaw JAW_OPEN radians open, and the given
    expression [E] and eyelid [2] coefficients (default zero)."""
    import torch

    from emotalker.core.rig.flame import FlameParams, FlameRig

    row = lambda x, n: torch.zeros(1, n) if x is None else torch.as_tensor(x, dtype=torch.float32).reshape(1, n)  # noqa: E731
    with torch.no_grad():
        verts, _ = FlameRig(model)(FlameParams(expr=row(expr, model.n_expr), eyelids=row(eyelids, 2),
                                               jaw=torch.tensor([[JAW_OPEN, 0.0, 0.0]])))
    return verts[0].numpy().astype(np.float64)


def view_cameras(model: FlameModel, resolution: int = RESOLUTION):
    """(viewmat, K) per view in VIEWS: the camera orbits the template's bounding-box centre,
    far enough that the whole head fits the frame."""
    from emotalker.core.rig.mesh_preview import look_at

    lo, hi = model.v_template.min(0).astype(np.float64), model.v_template.max(0).astype(np.float64)
    centre = (lo + hi) / 2
    f = resolution * 2.5  # about a 23 degree field of view, a portrait lens
    distance = f / resolution * 1.05 * float(max(hi[1] - lo[1], hi[0] - lo[0])) + hi[2] - centre[2]
    K = np.array([[f, 0, resolution / 2], [0, f, resolution / 2], [0, 0, 1.0]])
    cams = []
    for yaw, pitch in VIEWS:
        y, p = np.radians(yaw), np.radians(pitch)
        direction = np.array([np.sin(y) * np.cos(p), np.sin(p), np.cos(y) * np.cos(p)])
        cams.append((look_at(centre + distance * direction, centre), K))
    return cams


def cast_view(model: FlameModel, verts: np.ndarray, colours: np.ndarray, viewmat, K, resolution: int, detector):
    """Render verts [V,3] from one view, detect, and cast: (hits [478,3] float64 NaN where missed,
    faces [478] -1 where missed), or None when FaceMesh finds no face."""
    from emotalker.core.rig.mesh_preview import rasterize, render_mesh

    img = render_mesh(verts, model.faces, colours, viewmat, K, resolution, resolution, background=BACKGROUND)
    pts, _ = detector.detect(img)
    if pts is None:
        return None
    fid, bary = rasterize(verts, model.faces, viewmat, K, resolution, resolution)
    z = verts @ viewmat[2, :3] + viewmat[2, 3]
    depth = np.where(fid >= 0, (z[model.faces[np.maximum(fid, 0)]] * bary).sum(-1), np.inf)
    face = np.full(N_LANDMARKS, -1, np.int64)
    hits = np.full((N_LANDMARKS, 3), np.nan)
    for k, (x, y) in enumerate(pts):
        pix = front_pixel(depth, int(np.floor(y)), int(np.floor(x)))
        if pix is not None:
            face[k] = fid[pix]
            hits[k] = bary[pix] @ verts[model.faces[face[k]]]
    return hits, face


def front_pixel(depth: np.ndarray, i: int, j: int, radius: int = EDGE_PX, edge: float = EDGE_DEPTH):
    """The pixel to cast a landmark at (i, j) through: itself, unless it lies behind a depth edge within
    `radius` pixels (a lip's edge with the mouth's inside behind it, the face's outline), where the
    nearest pixel of the front surface is taken: a landmark on an edge belongs to the front side."""
    h, w = depth.shape
    if not (0 <= i < h and 0 <= j < w):
        return None
    i0, j0 = max(i - radius, 0), max(j - radius, 0)
    win = depth[i0:i + radius + 1, j0:j + radius + 1]
    front = win.min()
    if not np.isfinite(front):
        return None
    if depth[i, j] <= front + edge:
        return i, j
    ii, jj = np.nonzero(win <= front + edge)
    k = int(np.argmin((ii + i0 - i) ** 2 + (jj + j0 - j) ** 2))
    return int(ii[k] + i0), int(jj[k] + j0)


def make_embedding(model: FlameModel, progress=None, source=None) -> LandmarkEmbedding:
    """Render, detect, cast and vote (see the module's docstring), then measure FaceMesh's response to
    the expression (`track.response`). InputError when FaceMesh finds the face in fewer than two views
    (a rig without a recognisable face or albedo)."""
    from emotalker.core.rig.mesh_preview import render_mesh
    from emotalker.track.landmarks import LandmarkDetector, progress_context
    from emotalker.track.response import measure_response, n_coefficients

    colours = model.albedo if model.albedo is not None else np.full((model.n_verts, 3), 0.75)
    verts = posed_template(model)
    cameras = view_cameras(model)
    near = cameras[:RESPONSE_VIEWS]
    hits, faces = [], []
    renders = len(cameras) + len(near) * (1 + n_coefficients(model))
    with (LandmarkDetector(static_images=True, max_faces=1) as det,
          progress_context(progress, renders, "landmark embedding") as bar):
        for viewmat, K in cameras:
            cast = cast_view(model, verts, colours, viewmat, K, RESOLUTION, det)
            if cast is not None:
                hits.append(cast[0])
                faces.append(cast[1])
            if bar is not None:
                bar.update(1)
        if len(hits) < 2:
            raise InputError(source, f"FaceMesh found a face in {len(hits)} of {len(VIEWS)} renders of this rig's "
                                     "neutral template; a landmark embedding needs a recognisable face (and an albedo)")
        emb = vote(model, verts, np.stack(hits), np.stack(faces), source)

        def render(v, viewmat, K):
            return render_mesh(v, model.faces, colours, viewmat, K, RESOLUTION, RESOLUTION, background=BACKGROUND)

        emb.response = measure_response(model, emb, near, render, det, bar)
    return emb


def vote(model: FlameModel, verts: np.ndarray, hits: np.ndarray, faces: np.ndarray, source=None) -> LandmarkEmbedding:
    """hits [N,478,3] (NaN: missed) on verts [V,3], faces [N,478], per view that found the face -> the embedding."""
    tol = AGREE * float(np.linalg.norm(verts.max(0) - verts.min(0)))
    n_views = hits.shape[0]
    rows = []
    for k in range(N_LANDMARKS):
        seen = ~np.isnan(hits[:, k, 0])
        if not seen.any():
            continue
        med = np.median(hits[seen, k], axis=0)
        agree = seen & (np.linalg.norm(np.nan_to_num(hits[:, k] - med, nan=np.inf), axis=1) < tol)
        if agree.sum() < max(2, MIN_AGREE * n_views):
            continue
        face, bary = nearest_on_faces(verts, model.faces, np.unique(faces[agree, k]), hits[agree, k].mean(0))
        rows.append((k, face, bary, agree.sum() / n_views))
    if not rows:
        raise InputError(source, "no landmark landed on the rig's surface consistently across the views")
    landmark, face, bary, weight = zip(*rows)
    face = np.array(face, np.int64)
    return LandmarkEmbedding(np.array(landmark, np.int64), face, model.faces[face].astype(np.int64),
                             np.array(bary, np.float32), np.array(weight, np.float32))


def nearest_on_faces(verts: np.ndarray, faces: np.ndarray, hit: np.ndarray, point: np.ndarray):
    """(triangle, barycentrics) of the surface point nearest `point` among the triangles `hit`
    and those sharing a vertex with them (the mean of the hits may sit over a neighbour)."""
    near = np.flatnonzero(np.isin(faces, faces[hit]).any(1))
    tri = verts[faces[near]]  # [N,3,3]
    closest, bary = closest_on_triangles(point, tri)
    best = int(np.argmin(np.linalg.norm(closest - point, axis=1)))
    return int(near[best]), bary[best]


def closest_on_triangles(p: np.ndarray, tri: np.ndarray):
    """Closest point to p [3] on each triangle tri [N,3,3]: (points [N,3], barycentrics [N,3])."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    n = np.cross(b - a, c - a)
    n2 = np.maximum((n * n).sum(1), 1e-30)
    q = p - ((p - a) * n).sum(1, keepdims=True) * n / n2[:, None]  # projection on each plane
    bary = np.stack([(np.cross(c - b, q - b) * n).sum(1), (np.cross(a - c, q - c) * n).sum(1),
                     (np.cross(b - a, q - a) * n).sum(1)], 1) / n2[:, None]
    out = (bary < 0).any(1)
    # outside: the nearest point of the three edges
    for i in np.flatnonzero(out):
        best = None
        for u, v, ku, kv in ((a[i], b[i], 0, 1), (b[i], c[i], 1, 2), (c[i], a[i], 2, 0)):
            t = float(np.clip(np.dot(p - u, v - u) / max(np.dot(v - u, v - u), 1e-30), 0, 1))
            d = np.linalg.norm(u + t * (v - u) - p)
            if best is None or d < best[0]:
                w = np.zeros(3)
                w[ku], w[kv] = 1 - t, t
                best = (d, w)
        bary[i] = best[1]
    return (tri * bary[:, :, None]).sum(1), bary
