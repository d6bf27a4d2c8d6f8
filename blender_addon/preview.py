"""Progressive viewport previews that never block Blender's UI thread.

`view_draw` only says what it wants (`PreviewLane.request`) and draws the newest
finished image (`PreviewLane.image`); a thread of the lane asks a worker of its
own (not the one a bake runs in, so a bake never holds the viewport up) for the
pixels, as Cycles' viewport does: a reduced-resolution image first, then full
resolution if no newer request came in while the preview rendered. Requests made
stale by a newer frame or view are never sent: the thread always takes the
newest one. The pixels come back Blender-ready (scene-linear, premultiplied,
bottom row first) through one reused buffer file, on a RAM-backed folder where
there is one, so the UI thread only uploads them.

Standard library and numpy only (no bpy): `benchmarks/viewport.py` drives this
same code outside Blender.
"""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .worker_client import WorkerClient, WorkerError

PREVIEW_SCALE = 4
"""The first image of a new frame or view is rendered at 1/PREVIEW_SCALE of the viewport's size."""


@dataclass(frozen=True)
class PreviewRequest:
    """What one viewport shows: `layers`, one render_frame params dict an avatar (full size, with its
    `cache` folder), each with the camera distance it is composited by, and the image size."""

    width: int
    height: int
    layers: tuple[tuple[float, dict], ...]

    @functools.cached_property
    def key(self) -> str:
        """Everything the pixels depend on (frame, view, size, avatars): an image of the same key needs no
        new render."""
        return json.dumps([self.width, self.height, [params for _, params in self.layers]], sort_keys=True)


@dataclass(frozen=True)
class PreviewImage:
    """A finished image: scene-linear premultiplied RGBA [height, width, 4], bottom row first; `final`
    when it is at the request's full size, else 1/PREVIEW_SCALE of it."""

    key: str
    pixels: np.ndarray
    final: bool
    version: int


def render_frame(worker: WorkerClient, params: dict) -> np.ndarray:
    """The pixels of one `render_frame` request [height, width, 4], the files and folders it names
    declared to the worker first (it reads and writes nothing else)."""
    reply = worker.call("render_frame", params, timeout=600, write=[params["cache"]],
                        read=[params["avatar"], params.get("curves"), params.get("audio")])
    return np.fromfile(reply["path"], np.float32).reshape(reply["height"], reply["width"], 4)


def scaled(params: dict, scale: int) -> dict:
    """render_frame params for an image `scale` times smaller (the intrinsics scaled with it)."""
    if scale == 1:
        return params
    K = np.asarray(params["K"], np.float64).copy()
    K[:2] /= scale
    return {**params, "K": K.tolist(), "width": max(1, params["width"] // scale),
            "height": max(1, params["height"] // scale)}


def over(layers: list[tuple[float, np.ndarray]]) -> np.ndarray | None:
    """Premultiplied RGBA layers composited back to front by their distance."""
    out = None
    for _, rgba in sorted(layers, key=lambda item: -item[0]):
        out = rgba if out is None else rgba + out * (1.0 - rgba[..., 3:4])
    return out


class PreviewLane:
    """One viewport's previews, rendered on a thread by `worker()` (a WorkerClient of the lane's own)."""

    def __init__(self, worker: Callable[[], WorkerClient], on_image: Callable[[], None] | None = None,
                 scale: int = PREVIEW_SCALE):
        self._worker = worker
        self._on_image = on_image
        self.scale = scale
        self._cond = threading.Condition()
        self._wanted: PreviewRequest | None = None
        self._image: PreviewImage | None = None
        self._error: tuple[str, str] | None = None
        self._versions = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="emotalker-preview", daemon=True)
        self._thread.start()

    def request(self, req: PreviewRequest) -> None:
        """Ask for `req` (returns at once); any request not yet started is dropped for it."""
        with self._cond:
            if self._wanted is None or self._wanted.key != req.key:
                self._wanted = req
                self._cond.notify()

    def image(self) -> PreviewImage | None:
        """The newest finished image (perhaps of an earlier request, or a reduced one)."""
        return self._image

    def error(self, key: str) -> str | None:
        """Why the request `key` has no image (the frame is outside the bake, the worker is down), if it failed."""
        error = self._error
        return error[1] if error is not None and error[0] == key else None

    def settled(self) -> bool:
        """Whether the newest request has its final image, or has failed: nothing more is coming."""
        with self._cond:
            req, image, error = self._wanted, self._image, self._error
        if req is None or (error is not None and error[0] == req.key):
            return True
        return image is not None and image.key == req.key and image.final

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _next(self) -> tuple[PreviewRequest, int] | None:
        """The newest request still to render and the scale to render it at (None once closed)."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                req, image = self._wanted, self._image
                failed = self._error is not None and req is not None and self._error[0] == req.key
                if req is not None and not failed:
                    if image is None or image.key != req.key:
                        return req, self.scale
                    if not image.final:
                        return req, 1
                self._cond.wait()

    def _run(self) -> None:
        while (todo := self._next()) is not None:
            req, scale = todo
            try:
                pixels = self._render(req, scale)
            except WorkerError as exc:
                with self._cond:
                    self._error = (req.key, str(exc))
            else:
                with self._cond:
                    self._versions += 1
                    self._image = PreviewImage(req.key, pixels, scale == 1, self._versions)
                    self._error = None
            if self._on_image is not None:
                self._on_image()

    def _render(self, req: PreviewRequest, scale: int) -> np.ndarray:
        worker = self._worker()
        width, height = max(1, req.width // scale), max(1, req.height // scale)
        layers = []
        for distance, params in req.layers:
            layers.append((distance, render_frame(worker, scaled(params, scale))))
        return over(layers) if layers else np.zeros((height, width, 4), np.float32)
