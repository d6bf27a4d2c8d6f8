"""Render the README's Blender walkthrough pictures headless, through the real add-on.

    .venv/bin/python tools/blender_walkthrough.py --out docs/img

Imports the shipped demo avatar with the add-on, keys a happy-to-sad cross-fade
on its emotion properties, bakes through the worker, then renders frames with
the "EmoTalker Splats" engine (F12) and the proxy mesh with Workbench (what
Solid mode shows), and writes them side by side, labelled, as OUT/blender_walkthrough.png.
Needs the `blender` extra (bpy).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/img")
    ap.add_argument("--frames", default="20,100", help="timeline frames to render")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    renders = Path(tempfile.mkdtemp(prefix="emotalker_walkthrough_renders_"))

    import bpy

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("EMOTALKER_ENV", sys.prefix)
    import blender_addon

    bpy.ops.wm.read_factory_settings(use_empty=True)
    blender_addon.register()
    data = ROOT / "emotalker" / "data"
    bpy.ops.emotalker.import_avatar(directory=str(data / "demo_avatar"), name="Demo")
    avatar = bpy.data.objects["Demo"]
    props = avatar.emotalker
    props.audio_path = str(data / "demo_speech.wav")
    props.cache_dir = str(Path(tempfile.mkdtemp(prefix="emotalker_walkthrough_")))
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end, scene.render.fps = 1, 124, 25
    for frame, happy, sad in ((1, 1.0, 0.0), (40, 1.0, 0.0), (85, 0.0, 1.0), (124, 0.0, 1.0)):
        props.neutral, props.happy, props.sad, props.intensity = 0.0, happy, sad, 2.5
        for name in ("neutral", "happy", "sad", "intensity"):
            avatar.keyframe_insert(f"emotalker.{name}", frame=frame)
    bpy.context.view_layer.objects.active = avatar
    print("baking ...", flush=True)
    assert bpy.ops.emotalker.bake() == {"FINISHED"}

    bpy.ops.object.camera_add(location=(0.12, -0.62, 0.03), rotation=(math.radians(90), 0.0, math.radians(11)))
    scene.camera = bpy.context.object
    scene.camera.data.lens = 85
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 384, 384, 100
    scene.render.film_transparent = True
    scene.view_settings.view_transform = "Standard"  # show the avatar's trained colours as they are
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    light = bpy.data.objects.new("Light", bpy.data.lights.new("Light", "SUN"))
    scene.collection.objects.link(light)
    light.rotation_euler = (math.radians(50), 0, math.radians(30))

    tiles = []  # (path, label)
    for frame in (int(f) for f in args.frames.split(",")):
        scene.frame_set(frame)
        mood = "happy" if props.happy >= props.sad else "sad"
        scene.render.engine = "BLENDER_WORKBENCH"
        scene.display.shading.light = "STUDIO"
        scene.render.filepath = str(renders / f"proxy_{frame:03d}.png")
        bpy.ops.render.render(write_still=True)
        tiles.append((scene.render.filepath, f"Solid (proxy), frame {frame}: {mood}"))
        scene.render.engine = "EMOTALKER_SPLATS"
        scene.render.filepath = str(renders / f"splats_{frame:03d}.png")
        bpy.ops.render.render(write_still=True)
        tiles.append((scene.render.filepath, f"EmoTalker Splats F12, frame {frame}"))
        print(f"frame {frame}: happy {props.happy:.2f} sad {props.sad:.2f}", flush=True)
    blender_addon.unregister()

    import numpy as np
    from PIL import Image

    from emotalker.bake.video import contact_sheet

    # One row on Blender's viewport grey.
    images = [np.asarray(Image.open(path).convert("RGBA")) for path, _ in tiles]
    strip = out / "blender_walkthrough.png"
    Image.fromarray(contact_sheet(images, [label for _, label in tiles], columns=len(images),
                                  background=(38, 38, 38))).save(strip, optimize=True)
    print(f"wrote {strip}")


if __name__ == "__main__":
    main()
