"""Headless Cycles rendering of the FLAME head: the only module that imports bpy.

One `HeadRenderer` builds a scene once (the head mesh, a skin material, two
sun lights, a camera); per clip it writes the emotion's skin colour and
wrinkle depths into vertex attributes, and per frame it only rewrites the
vertex positions and the camera. Cycles runs on the
CPU with a few samples, no denoiser, persistent data and a transparent film,
so the alpha channel is the head's coverage.

Cameras come in OpenCV convention (world-to-camera `viewmat` [4,4], `K`
[3,3], pixel (i, j) spanning [i, i+1) x [j, j+1)); Blender's camera looks
down its -Z with +Y up, so its world matrix is inv(viewmat) @ diag(1,-1,-1,1).
FLAME space is used as Blender's world space as is: nothing in a render
depends on which axis Blender calls up.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emotalker.sample.emotions import Skin
from emotalker.sample.masks import MASK_NAMES, skin_colour, wrinkle_weights


@dataclass(frozen=True)
class RenderSettings:
    width: int = 256
    height: int = 256
    samples: int = 4
    threads: int = 0  # 0: all cores
    ambient: float = 0.35  # flat ambient light, as emission: noise-free fill
    tile: int = 64


def blender_camera(K: np.ndarray, viewmat: np.ndarray, width: int, height: int) -> dict:
    """Blender camera settings that reproduce an OpenCV camera (pure; testable without bpy).

    K [3,3], viewmat [4,4] world-to-camera. Returns matrix_world [4,4], sensor_fit,
    sensor (mm), lens (mm), shift_x, shift_y.
    """
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    size = max(width, height)
    sensor = 36.0
    horizontal = width >= height
    lens = (fx if horizontal else fy) * sensor / (width if horizontal else height)
    flip = np.diag([1.0, -1.0, -1.0, 1.0])
    return {
        "matrix_world": np.linalg.inv(viewmat.astype(np.float64)) @ flip,
        "sensor_fit": "HORIZONTAL" if horizontal else "VERTICAL",
        "sensor": sensor,
        "lens": lens,
        "shift_x": (0.5 * width - cx) / size,
        "shift_y": (cy - 0.5 * height) / size,
        "pixel_aspect": fy / fx if horizontal else fx / fy,
    }


class HeadRenderer:
    """A Cycles scene holding one head mesh. Not thread-safe (bpy is global); one per process."""

    def __init__(self, verts: np.ndarray, faces: np.ndarray, albedo: np.ndarray, masks: dict[str, np.ndarray],
                 settings: RenderSettings = RenderSettings()):
        """verts [V,3] rest pose, faces [F,3], albedo [V,3] linear 0..1, masks name -> [V] (see masks.MASK_NAMES)."""
        try:
            import bpy
        except ImportError:
            from emotalker.core.base.errors import EmoTalkerError

            raise EmoTalkerError("rendering sample data needs Blender as a Python module: "
                                 "pip install 'emotalker[blender]' (bpy 5.0.1, Python 3.11)") from None

        self.bpy = bpy
        self.settings = settings
        bpy.ops.wm.read_factory_settings(use_empty=True)
        self.scene = bpy.context.scene
        self._setup_render()
        self.albedo = albedo.astype(np.float32)
        self.masks = {k: masks[k] for k in MASK_NAMES}
        self.mesh, self.obj = self._make_mesh(verts, faces, albedo, masks)
        self._make_material()
        self.set_skin(Skin())
        self._make_lights()
        cam_data = bpy.data.cameras.new("camera")
        cam_data.clip_start, cam_data.clip_end = 0.01, 100.0
        self.camera = bpy.data.objects.new("camera", cam_data)
        self.scene.collection.objects.link(self.camera)
        self.scene.camera = self.camera

    # -- scene -------------------------------------------------------------------

    def _setup_render(self) -> None:
        s, r = self.settings, self.scene.render
        r.engine = "CYCLES"
        c = self.scene.cycles
        c.device = "CPU"
        c.samples = s.samples
        c.use_adaptive_sampling = False
        c.use_denoising = False
        c.max_bounces = 0  # direct light only; the ambient term is emission
        c.caustics_reflective = c.caustics_refractive = False
        c.use_auto_tile = True
        c.tile_size = s.tile
        c.seed = 0
        r.use_persistent_data = True
        r.film_transparent = True
        r.resolution_x, r.resolution_y = s.width, s.height
        r.resolution_percentage = 100
        if s.threads:
            r.threads_mode, r.threads = "FIXED", s.threads
        r.image_settings.file_format = "PNG"
        r.image_settings.color_mode = "RGBA"
        r.image_settings.color_depth = "8"
        r.image_settings.compression = 15
        self.scene.view_settings.view_transform = "Standard"
        self.scene.view_settings.look = "None"
        world = self.bpy.data.worlds.new("world")
        world.color = (0.0, 0.0, 0.0)
        self.scene.world = world

    def _make_mesh(self, verts, faces, albedo, masks):
        bpy = self.bpy
        mesh = bpy.data.meshes.new("head")
        mesh.from_pydata(verts.astype(np.float64).tolist(), [], faces.astype(np.int64).tolist())
        mesh.polygons.foreach_set("use_smooth", np.ones(len(faces), bool))
        mesh.color_attributes.new("colour", "FLOAT_COLOR", "POINT")
        mesh.attributes.new("wrinkle", "FLOAT_VECTOR", "POINT")
        rest = mesh.attributes.new("rest", "FLOAT_VECTOR", "POINT")
        rest.data.foreach_set("vector", verts.astype(np.float32).ravel())
        mesh.update()
        obj = bpy.data.objects.new("head", mesh)
        self.scene.collection.objects.link(obj)
        return mesh, obj

    def _make_material(self) -> None:
        """Skin shader: the per-vertex colour, and wrinkles as bump ridges weighted per vertex.

        The emotion's colour and wrinkle depths are written per clip into the
        `colour` and `wrinkle` attributes (see `set_skin`), which keeps the
        per-pixel shader small: it is most of the render time.
        """
        bpy = self.bpy
        mat = bpy.data.materials.new("skin")
        if mat.node_tree is None:
            mat.use_nodes = True
        nt = mat.node_tree
        nodes, links = nt.nodes, nt.links
        nodes.clear()

        def node(kind, **props):
            n = nodes.new(kind)
            for k, v in props.items():
                setattr(n, k, v)
            return n

        def attr(name, socket):
            return node("ShaderNodeAttribute", attribute_type="GEOMETRY", attribute_name=name).outputs[socket]

        def math_(op, a, b=None):
            n = node("ShaderNodeMath", operation=op)
            for i, x in enumerate((a, b)):
                if isinstance(x, (int, float)):
                    n.inputs[i].default_value = float(x)
                elif x is not None:
                    links.new(x, n.inputs[i])
            return n.outputs[0]

        rest = node("ShaderNodeSeparateXYZ")
        links.new(attr("rest", "Vector"), rest.inputs[0])
        depth = node("ShaderNodeSeparateXYZ")
        links.new(attr("wrinkle", "Vector"), depth.inputs[0])

        # Wrinkles: squared half-sine ridges in rest-pose coordinates, so they stay on the skin.
        def ridges(coord, period, weight):
            s = math_("MAXIMUM", math_("SINE", math_("MULTIPLY", coord, 2 * math.pi / period)), 0.0)
            return math_("MULTIPLY", math_("MULTIPLY", s, s), weight)

        height = math_("ADD", math_("ADD", ridges(rest.outputs[1], 0.008, depth.outputs[0]),
                                    ridges(rest.outputs[0], 0.005, depth.outputs[1])),
                       ridges(rest.outputs[1], 0.003, depth.outputs[2]))
        bump = node("ShaderNodeBump")
        bump.inputs["Strength"].default_value = 1.0
        bump.inputs["Distance"].default_value = 0.0015
        links.new(height, bump.inputs["Height"])
        # Creases are a little darker (self-shadowing).
        shade = node("ShaderNodeVectorMath", operation="SCALE")
        links.new(attr("colour", "Color"), shade.inputs[0])
        links.new(math_("SUBTRACT", 1.0, math_("MULTIPLY", height, 0.3)), shade.inputs["Scale"])
        colour = shade.outputs[0]

        bsdf = node("ShaderNodeBsdfPrincipled")
        links.new(colour, bsdf.inputs["Base Color"])
        bsdf.inputs["Roughness"].default_value = 0.5
        links.new(bump.outputs["Normal"], bsdf.inputs["Normal"])
        if "Specular IOR Level" in bsdf.inputs:
            bsdf.inputs["Specular IOR Level"].default_value = 0.3
        ambient = node("ShaderNodeEmission")
        links.new(colour, ambient.inputs["Color"])
        ambient.inputs["Strength"].default_value = self.settings.ambient
        add = node("ShaderNodeAddShader")
        links.new(bsdf.outputs[0], add.inputs[0])
        links.new(ambient.outputs[0], add.inputs[1])
        out = node("ShaderNodeOutputMaterial")
        links.new(add.outputs[0], out.inputs["Surface"])
        self.mesh.materials.append(mat)

    def _make_lights(self) -> None:
        bpy = self.bpy
        for name, direction, energy in (("key", (0.6, 0.7, 1.0), 3.0), ("fill", (-0.8, 0.1, 0.6), 1.0)):
            light = bpy.data.lights.new(name, "SUN")
            light.energy = energy
            light.angle = 0.0
            # No cast shadows: at a few samples they speckle on a low-poly skin (and cost time).
            light.use_shadow = False
            obj = bpy.data.objects.new(name, light)
            # A sun shines along its local -Z: point +Z at the light.
            z = np.asarray(direction, np.float64)
            z /= np.linalg.norm(z)
            x = np.cross((0.0, 1.0, 0.0), z)
            x /= np.linalg.norm(x)
            m = np.eye(4)
            m[:3, 0], m[:3, 1], m[:3, 2] = x, np.cross(z, x), z
            obj.matrix_world = _matrix(m)
            self.scene.collection.objects.link(obj)

    # -- per clip and per frame --------------------------------------------------

    def set_skin(self, skin: Skin) -> None:
        """Write the emotion's skin colour and wrinkle depths into the mesh (once per clip)."""
        colour = skin_colour(self.albedo, self.masks, skin.flush, skin.pallor)
        rgba = np.concatenate([colour, np.ones((len(colour), 1), np.float32)], 1)
        self.mesh.color_attributes["colour"].data.foreach_set("color", rgba.ravel())
        depth = wrinkle_weights(self.masks, skin.forehead, skin.furrow, skin.nose)
        self.mesh.attributes["wrinkle"].data.foreach_set("vector", depth.ravel())
        self.mesh.update()

    def set_camera(self, K: np.ndarray, viewmat: np.ndarray) -> None:
        s = self.settings
        cam = blender_camera(K, viewmat, s.width, s.height)
        data = self.camera.data
        data.sensor_fit = cam["sensor_fit"]
        data.sensor_width = data.sensor_height = cam["sensor"]
        data.lens = cam["lens"]
        data.shift_x, data.shift_y = cam["shift_x"], cam["shift_y"]
        r = self.scene.render
        r.pixel_aspect_x, r.pixel_aspect_y = (1.0, cam["pixel_aspect"]) if cam["pixel_aspect"] >= 1 else (1.0 / cam["pixel_aspect"], 1.0)
        self.camera.matrix_world = _matrix(cam["matrix_world"])

    def render(self, verts: np.ndarray, path: str | Path) -> None:
        """Pose the mesh at `verts` [V,3] and render an RGBA PNG to `path`."""
        self.mesh.vertices.foreach_set("co", verts.astype(np.float32).ravel())
        self.mesh.update()
        self.scene.render.filepath = str(path)
        with _quiet_stdout():
            self.bpy.ops.render.render(write_still=True)


@contextlib.contextmanager
def _quiet_stdout():
    """Silence Blender's per-render log lines (written to the stdout file descriptor)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _matrix(m: np.ndarray):
    from mathutils import Matrix

    return Matrix([list(map(float, row)) for row in m])
