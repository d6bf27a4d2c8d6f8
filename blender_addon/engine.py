"""The "EmoTalker Splats" render engine: F12, animation renders and the Rendered viewport.

Each avatar in the scene is rendered by the core worker (`render_frame`), using
the bake's FLAME curves for the current frame (the neutral face before a bake),
and the images are composited back to front. The worker sends the pixels as
Blender's buffers take them, so Blender only copies them. F12 asks the jobs
lane's worker and waits (Blender runs it off the UI thread); the viewport never
waits: it asks a `PreviewLane` (preview.py) and draws the newest finished image.
"""

from __future__ import annotations

import collections
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import bpy

from . import camera as camera_conv
from . import session
from .bake_job import audio_source, curves_path
from .operators import cache_dir
from .preview import PreviewLane, PreviewRequest, over, render_frame
from .worker_client import WorkerError

REDRAW_INTERVAL = 0.02
"""Seconds between checks for a finished preview while one is being rendered."""
LANES: list[PreviewLane] = []
"""The preview lane of every Rendered viewport open now."""
DRAW_SECONDS: collections.deque = collections.deque(maxlen=1000)
"""How long the latest viewport draws held Blender's UI thread (the goal: a few milliseconds)."""


def scene_avatars(depsgraph):
    return [inst.object.original for inst in depsgraph.object_instances
            if inst.object.type == "ARMATURE" and inst.object.original.emotalker.is_avatar
            and inst.object.original.emotalker.avatar_path]


def frame_params(context_like, avatar, frame: int, viewmat, K, width: int, height: int, cache: Path,
                 camera_model: str = "pinhole") -> dict:
    """render_frame params of one avatar: the bake's curves and audio once baked, else the neutral face."""
    props = avatar.emotalker
    curves = curves_path(cache_dir(props, avatar.name))
    params = {"avatar": bpy.path.abspath(props.avatar_path), "cache": str(cache), "frame": int(frame),
              "viewmat": np.asarray(viewmat).tolist(), "K": np.asarray(K).tolist(), "width": width, "height": height,
              "camera_model": camera_model}
    if props.baked and curves.exists():
        params["curves"] = str(curves)
        audio = audio_source(context_like, props)
        if audio:
            params["audio"] = audio
    else:
        params["no_emotion"] = True
    return params


def render_avatar(context_like, avatar, frame: int, viewmat, K, width: int, height: int,
                  camera_model: str = "pinhole") -> np.ndarray:
    """One avatar as Blender's buffers take it: scene-linear premultiplied RGBA float32 [H,W,4], bottom
    row first, rendered by the jobs lane's worker."""
    cache = cache_dir(avatar.emotalker, avatar.name) / "frames"
    return render_frame(session.worker(context_like),
                        frame_params(context_like, avatar, frame, viewmat, K, width, height, cache, camera_model))


def preview_root() -> Path:
    """Where the preview lane's pixels pass: a RAM-backed folder where the system has one, this
    Blender's own (removed when the add-on is)."""
    ram = Path("/dev/shm")
    base = ram if ram.is_dir() and os.access(ram, os.W_OK) else Path(tempfile.gettempdir())
    return base / f"emotalker-preview-{os.getpid()}"


def preview_cache(avatar) -> Path:
    return preview_root() / bpy.path.clean_name(avatar.name)


def viewport_camera(space, region, rv3d):
    """(world-to-camera [4,4] OpenCV, K [3,3], camera model) of a 3D viewport region (camera.viewport_camera)."""
    return camera_conv.viewport_camera(region.width, region.height, np.array(rv3d.window_matrix),
                                       np.array(rv3d.view_matrix), rv3d.is_perspective, space.clip_end)


class EmoTalkerRenderEngine(bpy.types.RenderEngine):
    bl_idname = "EMOTALKER_SPLATS"
    bl_label = "EmoTalker Splats"
    bl_use_preview = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lane: PreviewLane | None = None
        self._texture = None
        self._texture_version = -1

    def __del__(self):
        lane = getattr(self, "_lane", None)
        if lane is not None and lane in LANES:
            LANES.remove(lane)
            lane.close()

    def render(self, depsgraph):
        scene = depsgraph.scene
        r = scene.render
        width, height = int(r.resolution_x * r.resolution_percentage / 100), int(r.resolution_y * r.resolution_percentage / 100)
        cam = self.camera_override or scene.camera
        layers = []
        if cam is None:
            self.report({"ERROR"}, "EmoTalker Splats: the scene has no camera")
        else:
            model = camera_conv.model(cam)
            for avatar in scene_avatars(depsgraph):
                viewmat, K, _, _ = camera_conv.scene_camera(scene, cam, avatar, width, height)
                try:
                    rgba = render_avatar(bpy.context, avatar, scene.frame_current, viewmat, K, width, height, model)
                except WorkerError as exc:
                    self.report({"ERROR"}, f"EmoTalker Splats: {exc}")
                    continue
                layers.append((camera_conv.layer_distance(viewmat, model), rgba))
        pixels = over(layers)
        pixels = np.zeros((height, width, 4), np.float32) if pixels is None else pixels
        result = self.begin_result(0, 0, width, height)
        result.layers[0].passes["Combined"].rect = pixels.reshape(-1, 4)
        self.end_result(result)

    def view_update(self, context, depsgraph):
        self.tag_redraw()

    def view_draw(self, context, depsgraph):
        """Rendered viewport: ask for this view's pixels and draw the newest finished image; never waits."""
        started = time.perf_counter()
        try:
            self._view_draw(context, depsgraph)
        finally:
            DRAW_SECONDS.append(time.perf_counter() - started)

    def _view_draw(self, context, depsgraph):
        region, rv3d = context.region, context.region_data
        try:
            request = self._request(context, depsgraph, region, rv3d)
        except WorkerError as exc:
            draw_message(f"EmoTalker Splats: {exc}")
            return
        if self._lane is None:
            python = session.python(context)
            self._lane = PreviewLane(lambda: session.client(python, "preview"))
            LANES.append(self._lane)
        self._lane.request(request)
        image = self._lane.image()
        error = self._lane.error(request.key)
        if error is not None:
            draw_message(f"EmoTalker Splats: {error}")
        elif image is not None:
            self._draw_image(context, image, region.width, region.height)
        if not self._lane.settled():
            watch_for_previews()

    def _request(self, context, depsgraph, region, rv3d) -> PreviewRequest:
        width, height = region.width, region.height
        view, K, model = viewport_camera(context.space_data, region, rv3d)
        layers = []
        for avatar in scene_avatars(depsgraph):
            viewmat = view @ np.array(avatar.matrix_world)
            params = frame_params(context, avatar, context.scene.frame_current, viewmat, K, width, height,
                                  preview_cache(avatar), model)
            layers.append((camera_conv.layer_distance(viewmat, model), params))
        return PreviewRequest(width, height, tuple(layers))

    def _draw_image(self, context, image, width: int, height: int) -> None:
        """Draw `image` stretched over the region; uploaded once per new image (a redraw with nothing
        changed only draws the texture it has)."""
        import gpu
        from gpu_extras.presets import draw_texture_2d

        if image.version != self._texture_version:
            h, w = image.pixels.shape[:2]
            buffer = gpu.types.Buffer("FLOAT", w * h * 4, image.pixels.ravel())
            self._texture = gpu.types.GPUTexture((w, h), format="RGBA16F", data=buffer)
            self._texture_version = image.version
        gpu.state.blend_set("ALPHA_PREMULT")
        self.bind_display_space_shader(context.scene)
        draw_texture_2d(self._texture, (0, 0), width, height)
        self.unbind_display_space_shader()
        gpu.state.blend_set("NONE")


def draw_message(text: str) -> None:
    """One line of text at the viewport's bottom left (problems never show as a silent blank)."""
    import blf

    try:
        blf.size(0, 14)
    except TypeError:  # Blender before 4.0 also takes the dpi
        blf.size(0, 14, 72)
    blf.position(0, 16, 16, 0)
    blf.color(0, 1.0, 0.85, 0.3, 1.0)
    blf.draw(0, text)


def previews_settled() -> bool:
    """Whether every Rendered viewport shows its final image (or its problem)."""
    return all(lane.settled() for lane in LANES)


def _redraw_rendered_viewports() -> float | None:
    """Timer: redraw the Rendered viewports while a preview is on its way (a draw re-arms it if needed)."""
    global _watching
    _watching = False
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D" and area.spaces.active.shading.type == "RENDERED":
                area.tag_redraw()
    return None


_watching = False


def watch_for_previews() -> None:
    """Redraw soon: a preview is on its way (view_draw cannot be woken from the lane's thread)."""
    global _watching
    if not _watching:
        _watching = True
        bpy.app.timers.register(_redraw_rendered_viewports, first_interval=REDRAW_INTERVAL)


def panels():
    """Blender's own panels that make sense with this engine (render dimensions, output, ...)."""
    exclude = {"VIEWLAYER_PT_filter", "VIEWLAYER_PT_layer_passes"}
    return [p for p in bpy.types.Panel.__subclasses__()
            if "BLENDER_RENDER" in getattr(p, "COMPAT_ENGINES", set()) and p.__name__ not in exclude]


def register() -> None:
    bpy.utils.register_class(EmoTalkerRenderEngine)
    for panel in panels():
        panel.COMPAT_ENGINES.add(EmoTalkerRenderEngine.bl_idname)


def unregister() -> None:
    for lane in LANES:
        lane.close()
    LANES.clear()
    shutil.rmtree(preview_root(), ignore_errors=True)
    if bpy.app.timers.is_registered(_redraw_rendered_viewports):
        bpy.app.timers.unregister(_redraw_rendered_viewports)
    for panel in panels():
        panel.COMPAT_ENGINES.discard(EmoTalkerRenderEngine.bl_idname)
    bpy.utils.unregister_class(EmoTalkerRenderEngine)
