"""A tracked clip's contact sheet: frames with the fitted mesh and the landmarks drawn over them.

Green dots are the landmarks found in the frame, red dots the same landmarks on
the fitted mesh (the embedding's points, projected): where they part, the fit
is off. The mesh is blended over the frame so its outline shows against the face.
"""

from __future__ import annotations

import os

import numpy as np

MESH_OPACITY = 0.45
DOT = 1.2  # dot radius in pixels of a 256-pixel cell


def project(points: np.ndarray, viewmat: np.ndarray, K: np.ndarray) -> np.ndarray:
    """World points [N,3] -> pixel coordinates [N,2] (corner origin) through a world-to-camera viewmat and K."""
    cam = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    return cam[:, :2] / np.maximum(cam[:, 2:3], 1e-9) * np.array([K[0, 0], K[1, 1]]) + K[:2, 2]


def overlay(rgba: np.ndarray, verts: np.ndarray, faces: np.ndarray, colors: np.ndarray, viewmat: np.ndarray,
            K: np.ndarray, found: np.ndarray | None, fitted: np.ndarray) -> np.ndarray:
    """One cell: uint8 RGBA frame [H,W,4] over grey, the mesh blended in, dots for found [L,2] and fitted [L,2]
    landmarks (pixels) -> uint8 [H,W,3]."""
    from PIL import Image, ImageDraw

    from emotalker.bake.video import composite
    from emotalker.core.rig.mesh_preview import rasterize, render_mesh

    h, w = rgba.shape[:2]
    base = composite(rgba, (0.5, 0.5, 0.5)).astype(np.float32) / 255.0
    mesh = render_mesh(verts, faces, colors, viewmat, K, w, h, background=(0.0, 0.0, 0.0))
    hit = (rasterize(np.asarray(verts, np.float64), faces, viewmat, K, w, h)[0] >= 0)[..., None]
    img = np.where(hit, (1 - MESH_OPACITY) * base + MESH_OPACITY * mesh, base)
    im = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
    draw, r = ImageDraw.Draw(im), DOT * w / 256  # the cells are scaled to 256
    for pts, colour in ((found, (40, 230, 60)), (fitted, (240, 40, 40))):
        for x, y in (pts if pts is not None else ()):
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    return np.asarray(im)


def write_sheet(path: str | os.PathLike, cells: list[np.ndarray], labels: list[str], cell_size: int = 256) -> None:
    """Tile the cells (uint8 [H,W,3], scaled to `cell_size`) into one labelled PNG, written atomically."""
    from PIL import Image

    from emotalker.bake.video import contact_sheet, write_png

    small = [np.asarray(Image.fromarray(c).resize((cell_size, cell_size), Image.LANCZOS)) if c.shape[0] != cell_size
             else c for c in cells]
    write_png(path, contact_sheet(small, labels, columns=min(4, len(small))))
