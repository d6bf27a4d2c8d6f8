"""Images for the report page: tiles cropped to what they show, shrunk, encoded as PNG data: URIs."""

from __future__ import annotations

import base64
import io

import numpy as np

DISPLAY_SIDE = 192  # the longer side of a tile on the page, so that a 512-pixel avatar keeps the page small


def data_uri(mime: str, data: bytes) -> str:
    """`data:` URI of bytes, so the page needs no other file and no network."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def crop_box(tiles: list[np.ndarray], background: tuple = (1.0, 1.0, 1.0), margin: int = 6) -> tuple[slice, slice]:
    """(rows, columns) of the box around every tile's pixels that differ from the background, plus a margin
    (the whole image when all are background)."""
    stack = np.stack(tiles).astype(np.int16)
    bg = np.asarray(background, np.float32) * 255
    ys, xs = np.nonzero((np.abs(stack - bg).max(-1) > 6).any(0))
    H, W = stack.shape[1:3]
    if len(ys) == 0:
        return slice(0, H), slice(0, W)
    return (slice(max(ys.min() - margin, 0), min(ys.max() + margin + 1, H)),
            slice(max(xs.min() - margin, 0), min(xs.max() + margin + 1, W)))


def png_uri(image: np.ndarray, box: tuple[slice, slice] | None = None, side: int = DISPLAY_SIDE) -> str:
    """uint8 RGB [H,W,3], cropped to `box` and scaled so its longer side is `side` (never enlarged by more
    than 4x: tiny test avatars stay sharp, blocky rather than blurred) -> a PNG data: URI."""
    from PIL import Image

    if box is not None:
        image = image[box]
    h, w = image.shape[:2]
    scale = min(side / max(h, w), 4.0)
    pil = Image.fromarray(np.ascontiguousarray(image))
    if abs(scale - 1.0) > 1e-3:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        pil = pil.resize(size, Image.NEAREST if scale > 1 else Image.LANCZOS)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return data_uri("image/png", buffer.getvalue())
