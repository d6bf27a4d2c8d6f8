"""Image exports: RGBA PNG frames, an MP4 with the audio muxed in, and contact sheets.

The MP4 uses the ffmpeg binary bundled with imageio-ffmpeg (no system ffmpeg
needed). Frames are composited over a background colour (H.264 in yuv420p has
no alpha), padded to even sizes (yuv420p needs them), and piped to ffmpeg one
at a time, so memory does not grow with the clip.
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from numba import njit, prange

from emotalker.core.base.errors import InputError
from emotalker.core.base.fileio import atomic_path

FRAME_DIGITS = 6
# Preferred video encoders, best first; the first the bundled ffmpeg offers is used.
VIDEO_ENCODERS = ("libx264", "libopenh264", "mpeg4")


def straight_rgba(rgb: Any, alpha: Any, premultiplied: bool = True) -> np.ndarray:
    """rgb [H,W,3] and alpha [H,W,1] or [H,W] floats (numpy or torch) -> float32 [H,W,4] in [0,1], straight alpha.

    A splat render over a black background is premultiplied (colour = sum of
    c_i a_i T_i); PNG and the viewport take straight alpha, so colour is divided by alpha.
    """
    rgb = _numpy(rgb).astype(np.float32)
    alpha = _numpy(alpha).astype(np.float32).reshape(rgb.shape[0], rgb.shape[1], 1)
    if premultiplied:
        rgb = np.where(alpha > 1e-6, rgb / np.maximum(alpha, 1e-6), 0.0)
    return np.clip(np.concatenate([rgb, alpha], -1), 0.0, 1.0)


def blender_rgba(rgb: Any, alpha: Any) -> np.ndarray:
    """A splat render (premultiplied display colours) as Blender's buffers take it: float32 [H,W,4],
    scene-linear, premultiplied alpha, bottom row first. Made in the worker, so that Blender's UI
    thread only copies it (with the Standard view transform it shows the avatar's own colours).
    `straight_rgba`'s arithmetic, then the inverse sRGB transfer function (avatars learn display colours
    from their training images; Blender's buffers hold scene-linear light), in one compiled pass over
    the pixels (numpy's passes took 200 ms at 1280x720)."""
    from emotalker.core.base.inference_kernels import run_parallel

    rgb = np.ascontiguousarray(_numpy(rgb), np.float32)
    alpha = np.ascontiguousarray(_numpy(alpha), np.float32).reshape(rgb.shape[:2])
    out = np.empty((*alpha.shape, 4), np.float32)
    run_parallel(_blender_pixels, rgb, alpha, out)
    return out


@njit(parallel=True, cache=True, nogil=True)
def _blender_pixels(rgb, alpha, out):
    height, width = alpha.shape
    zero, one = np.float32(0.0), np.float32(1.0)
    for y in prange(height):
        row = height - 1 - y  # Blender's buffers start at the bottom row
        for x in range(width):
            a = alpha[y, x]
            for c in range(3):
                v = min(max(rgb[y, x, c] / max(a, np.float32(1e-6)) if a > 1e-6 else zero, zero), one)
                if v <= 0.04045:
                    linear = v / np.float32(12.92)
                else:
                    linear = ((v + np.float32(0.055)) / np.float32(1.055)) ** np.float32(2.4)
                out[row, x, c] = linear * min(max(a, zero), one)
            out[row, x, 3] = min(max(a, zero), one)


def to_rgba8(rgb: Any, alpha: Any, premultiplied: bool = True) -> np.ndarray:
    """`straight_rgba` as uint8 [H,W,4]."""
    return (straight_rgba(rgb, alpha, premultiplied) * 255.0 + 0.5).astype(np.uint8)


def write_png(path: str | os.PathLike, image: np.ndarray, atomic: bool = True) -> None:
    """Write a uint8 image [H,W,3|4] as PNG (RGB or RGBA)."""
    from PIL import Image

    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected uint8 [H,W,3|4], got {image.dtype} {list(image.shape)}")
    if not atomic:
        Image.fromarray(image).save(path, format="PNG")
        return
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def png_pattern(name: str) -> str:
    """The PNG frames' file name with the frame number left to fill: `<name>_{frame:06d}.png`."""
    return f"{name}_{{frame:0{FRAME_DIGITS}d}}.png"


def png_path(out_dir: str | os.PathLike, name: str, frame: int) -> Path:
    """`<out_dir>/<name>_000001.png` for timeline frame 1."""
    return Path(out_dir) / png_pattern(name).format(frame=frame)


def png_sink(out_dir: str | os.PathLike, name: str, to_image: Callable[[Any], np.ndarray]):
    """A FrameSink writing `<out_dir>/<name>_NNNNNN.png`; `to_image(item)` renders the frame (uint8 [H,W,4])."""
    from emotalker.bake.sequence import FrameSink

    return FrameSink("png", Path(out_dir), png_pattern(name),
                     lambda item, tmp: write_png(tmp, to_image(item), atomic=False))


def composite(rgba: np.ndarray, background: Sequence[float]) -> np.ndarray:
    """uint8 [H,W,4] straight alpha over an RGB background in [0,1] -> uint8 [H,W,3]."""
    if rgba.shape[2] == 3:
        return rgba
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3) * 255.0
    return (rgba[..., :3].astype(np.float32) * a + bg * (1.0 - a) + 0.5).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def video_encoder(ffmpeg: str) -> str:
    """The first of VIDEO_ENCODERS the ffmpeg binary offers."""
    listing = subprocess.run([ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    offered = {line.split()[1] for line in listing.splitlines() if len(line.split()) > 1 and line.startswith(" V")}
    for name in VIDEO_ENCODERS:
        if name in offered:
            return name
    raise RuntimeError(f"{ffmpeg} offers none of the video encoders {VIDEO_ENCODERS}")


def encode_mp4(frames: Sequence[str | os.PathLike], out: str | os.PathLike, fps: float, *,
               audio: str | os.PathLike | None = None, audio_start: float = 0.0,
               background: Sequence[float] = (1.0, 1.0, 1.0), crf: int = 18) -> str:
    """Encode PNG frames (paths, in order, same size) into an MP4, atomically; returns the video encoder used.

    The audio, when given, starts at `audio_start` seconds (the time of the first
    frame) and is cut at, or padded with silence to, the end of the video. RGBA frames are composited over
    `background` (RGB in [0,1]).
    """
    import imageio_ffmpeg
    from PIL import Image

    if not frames:
        raise ValueError("encode_mp4 needs at least one frame")
    seconds = len(frames) / fps
    first, frames = frames[0], iter(frames[1:])
    if audio is not None and not Path(audio).is_file():
        raise InputError(audio, "audio file not found")
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    encoder = video_encoder(ffmpeg)
    first_image = np.asarray(Image.open(first))
    h, w = first_image.shape[:2]
    even_h, even_w = h + h % 2, w + w % 2
    cmd = [ffmpeg, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{even_w}x{even_h}", "-r", f"{fps:g}", "-i", "-"]
    if audio is not None:
        # The video sets the length: the audio is padded with silence and cut to it (with -shortest,
        # audio shorter than a frame ended the file before its first video frame).
        cmd += ["-ss", f"{audio_start:.6f}", "-i", os.fspath(audio), "-map", "0:v:0", "-map", "1:a:0",
                "-c:a", "aac", "-b:a", "192k", "-af", "apad", "-t", f"{seconds:.6f}"]
    cmd += ["-c:v", encoder, "-pix_fmt", "yuv420p"]
    cmd += ["-crf", str(crf)] if encoder == "libx264" else ["-q:v", "3"] if encoder == "mpeg4" else []
    cmd += ["-movflags", "+faststart", "-f", "mp4"]
    with atomic_path(out) as tmp, tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd + [os.fspath(tmp)], stdin=subprocess.PIPE, stderr=log)
        try:
            for path, image in _images(first, first_image, frames):
                if image.shape[:2] != (h, w):
                    raise InputError(path, f"frame is {image.shape[1]}x{image.shape[0]}, the first frame {w}x{h}")
                rgb = composite(image if image.ndim == 3 else np.repeat(image[..., None], 3, 2), background)
                if (even_h, even_w) != (h, w):
                    rgb = np.pad(rgb, ((0, even_h - h), (0, even_w - w), (0, 0)), mode="edge")
                proc.stdin.write(np.ascontiguousarray(rgb[..., :3]).tobytes())
            proc.stdin.close()
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if code != 0:
            log.seek(0)
            raise RuntimeError(f"ffmpeg failed ({code}): {log.read().decode(errors='replace')[-2000:]}")
    return encoder


def _images(first, first_image, rest):
    from PIL import Image

    yield first, first_image
    for path in rest:
        yield path, np.asarray(Image.open(path))


def contact_sheet(images: Sequence[np.ndarray], labels: Sequence[str] | None = None, columns: int | None = None,
                  background: Sequence[int] = (255, 255, 255), padding: int = 4, label_height: int = 16) -> np.ndarray:
    """Tile uint8 images [H,W,3|4] (same size) into a grid with a text label under each -> uint8 [H',W',3].

    RGBA images are composited over `background`; `columns` defaults to a near-square grid.
    Labels are black on a light background and white on a dark one.
    """
    from PIL import Image, ImageDraw

    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")
    h, w = images[0].shape[:2]
    columns = columns or int(np.ceil(np.sqrt(len(images))))
    rows = int(np.ceil(len(images) / columns))
    cell_h = h + (label_height if labels is not None else 0)
    sheet = Image.new("RGB", (columns * (w + padding) + padding, rows * (cell_h + padding) + padding), tuple(background))
    draw = ImageDraw.Draw(sheet)
    bg = np.asarray(background, dtype=np.float32) / 255.0
    ink = (0, 0, 0) if bg.mean() > 0.5 else (255, 255, 255)
    for i, image in enumerate(images):
        if image.shape[:2] != (h, w):
            raise ValueError(f"image {i} is {list(image.shape[:2])}, the first {[h, w]}")
        x, y = padding + (i % columns) * (w + padding), padding + (i // columns) * (cell_h + padding)
        sheet.paste(Image.fromarray(composite(image, bg)[..., :3]), (x, y))
        if labels is not None:
            draw.text((x + 2, y + h + 2), str(labels[i]), fill=ink)
    return np.asarray(sheet)


def _numpy(t: Any) -> np.ndarray:
    if hasattr(t, "detach"):
        return t.detach().to("cpu").float().numpy()
    return np.asarray(t)
