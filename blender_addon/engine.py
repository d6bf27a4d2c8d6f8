"""The "EmoTalker Splats" render engine: F12, animation renders and the Rendered viewport.

Each avatar in the scene is rendered by the core worker from the scene camera
(`render_frame`), using the bake's FLAME curves for the current frame (the
neutral face before a bake), and the images are composited back to front.
Only the final pixel copy touches Blender; the viewport draw is kept thin
because the `gpu` module exists only with a display.
"""

from __future__ import annotations

import numpy as np

import bpy

from . import camera as camera_conv
from . import session
from .bake_job import audio_source, curves_path
from .operators import cache_dir
from .worker_client import WorkerError


def scene_avatars(depsgraph):
    return [inst.object.original for inst in depsgraph.object_instances
            if inst.object.type == "ARMATURE" and inst.object.original.emotalker.is_avatar
            and inst.object.original.emotalker.avatar_path]


def render_avatar(context_like, avatar, frame: int, viewmat, K, width: int, height: int) -> np.ndarray:
    """Straight-alpha RGBA float32 [H,W,4] (top row first) of one avatar, rendered by the worker."""
    props = avatar.emotalker
    cache = cache_dir(props, avatar.name)
    curves = curves_path(cache)
    params = {"avatar": bpy.path.abspath(props.avatar_path), "cache": str(cache / "frames"), "frame": int(frame),
              "viewmat": np.asarray(viewmat).tolist(), "K": np.asarray(K).tolist(), "width": width, "height": height}
    if props.baked and curves.exists():
        params["curves"] = str(curves)
        audio = audio_source(context_like, props)
        if audio:
            params["audio"] = audio
    else:
        params["no_emotion"] = True
    result = session.worker(context_like).call("render_frame", params, timeout=600, write=[params["cache"]],
                                               read=[params["avatar"], params.get("curves"), params.get("audio")])
    return np.load(result["path"], allow_pickle=False)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """The sRGB transfer function inverted: avatars learn display (sRGB) colours from their
    training images, while Blender's render buffers hold scene-linear light."""
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def composite(layers: list[tuple[float, np.ndarray]], height: int, width: int) -> np.ndarray:
    """Scene-linear premultiplied RGBA [H,W,4] of straight-alpha sRGB layers, composited back to front by distance.

    With the Standard view transform the saved image shows exactly the avatar's own colours."""
    out = np.zeros((height, width, 4), np.float32)
    for _, rgba in sorted(layers, key=lambda item: -item[0]):
        a = rgba[..., 3:4]
        out[..., :3] = srgb_to_linear(rgba[..., :3]) * a + out[..., :3] * (1 - a)
        out[..., 3:4] = a + out[..., 3:4] * (1 - a)
    return out


class EmoTalkerRenderEngine(bpy.types.RenderEngine):
    bl_idname = "EMOTALKER_SPLATS"
    bl_label = "EmoTalker Splats"
    bl_use_preview = False

    def render(self, depsgraph):
        scene = depsgraph.scene
        r = scene.render
        width, height = int(r.resolution_x * r.resolution_percentage / 100), int(r.resolution_y * r.resolution_percentage / 100)
        cam = self.camera_override or scene.camera
        layers = []
        if cam is None:
            self.report({"ERROR"}, "EmoTalker Splats: the scene has no camera")
        else:
            for avatar in scene_avatars(depsgraph):
                viewmat, K, _, _ = camera_conv.scene_camera(scene, cam, avatar, width, height)
                try:
                    rgba = render_avatar(bpy.context, avatar, scene.frame_current, viewmat, K, width, height)
                except WorkerError as exc:
                    self.report({"ERROR"}, f"EmoTalker Splats: {exc}")
                    continue
                layers.append((float(np.linalg.norm(viewmat[:3, 3])), rgba))
        pixels = composite(layers, height, width)[::-1]  # Blender's buffers start at the bottom row
        result = self.begin_result(0, 0, width, height)
        result.layers[0].passes["Combined"].rect = pixels.reshape(-1, 4)
        self.end_result(result)

    def view_update(self, context, depsgraph):
        self.tag_redraw()

    def view_draw(self, context, depsgraph):
        """Rendered viewport: the same worker render from the viewport's camera, drawn as a texture."""
        import gpu
        from gpu_extras.presets import draw_texture_2d

        region, rv3d = context.region, context.region_data
        width, height = region.width, region.height
        if not rv3d.is_perspective:
            return  # orthographic views have no pinhole camera; Solid mode shows the proxy
        P = np.array(rv3d.window_matrix)
        K = np.array([[P[0, 0] * width / 2, 0, width / 2 * (1 - P[0, 2])],
                      [0, P[1, 1] * height / 2, height / 2 * (1 + P[1, 2])], [0, 0, 1]])
        layers = []
        for avatar in scene_avatars(depsgraph):
            viewmat = camera_conv.BLENDER_TO_OPENCV_CAMERA @ np.array(rv3d.view_matrix) @ np.array(avatar.matrix_world)
            try:
                rgba = render_avatar(context, avatar, context.scene.frame_current, viewmat, K, width, height)
            except WorkerError:
                continue
            layers.append((float(np.linalg.norm(viewmat[:3, 3])), rgba))
        pixels = composite(layers, height, width)[::-1]
        buffer = gpu.types.Buffer("FLOAT", width * height * 4, pixels.ravel())
        texture = gpu.types.GPUTexture((width, height), format="RGBA16F", data=buffer)
        gpu.state.blend_set("ALPHA_PREMULT")
        self.bind_display_space_shader(context.scene)
        draw_texture_2d(texture, (0, 0), width, height)
        self.unbind_display_space_shader()
        gpu.state.blend_set("NONE")


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
    for panel in panels():
        panel.COMPAT_ENGINES.discard(EmoTalkerRenderEngine.bl_idname)
    bpy.utils.unregister_class(EmoTalkerRenderEngine)
