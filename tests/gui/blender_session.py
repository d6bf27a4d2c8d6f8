"""Runs inside a real Blender window (tests/test_blender_gui.py starts it under Xvfb): the add-on as an
animator uses it. Imports the demo avatar, keys two emotions, bakes, switches a viewport to Rendered,
scrubs while a 20 ms heartbeat timer watches the UI thread, takes screenshots, renders F12, and asks the
worker for the core's own render of the same views. Writes results.json and the images into OUT.

    blender --factory-startup --python tests/gui/blender_session.py -- OUT AVATAR AUDIO
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import bpy
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from window import HEARTBEAT, beats, heartbeat, start, view3d  # noqa: E402

OUT, AVATAR, AUDIO = (Path(a).resolve() for a in sys.argv[sys.argv.index("--") + 1:][:3])
FRAMES = 40
SCRUB = range(5, 25)  # 20 frame changes
results: dict = {"blender": bpy.app.version_string}


def screenshot(name: str) -> str:
    window, area, _ = view3d()
    path = OUT / f"{name}.png"
    with bpy.context.temp_override(window=window, screen=window.screen, area=area):
        bpy.ops.screen.screenshot_area(filepath=str(path), check_existing=False)
    return str(path)


def why_bake_fails(avatar) -> str:
    """The bake operator's error (its reports go to the window, not to us): the same job, run here."""
    from blender_addon.bake_job import BakeJob, bake_dir
    from blender_addon.operators import cache_dir

    job = BakeJob(bpy.context, avatar, bake_dir(cache_dir(avatar.emotalker, avatar.name)), run={"overwrite": True})
    job.start()
    job.wait()
    return f"poll {bpy.ops.emotalker.bake.poll()}, job error {job.error!r}"


def setup_scene():
    import blender_addon

    blender_addon.register()
    for obj in list(bpy.data.objects):
        if obj.type == "MESH":
            bpy.data.objects.remove(obj)
    assert bpy.ops.emotalker.import_avatar(directory=str(AVATAR), name="Ava") == {"FINISHED"}
    avatar = bpy.data.objects["Ava"]
    props = avatar.emotalker
    props.audio_path, props.cache_dir = str(AUDIO), str(OUT / "cache")
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end, scene.render.fps = 1, FRAMES, 25
    for frame, (happy, sad) in ((1, (1.0, 0.0)), (FRAMES, (0.0, 1.0))):  # happy cross-fading to sad
        props.neutral, props.happy, props.sad = 0.0, happy, sad
        for name in ("neutral", "happy", "sad"):
            avatar.keyframe_insert(f"emotalker.{name}", frame=frame)
    bpy.context.view_layer.objects.active = avatar
    return avatar


def frame_the_head(avatar) -> None:
    """Scene camera and viewport both looking at the head from the front."""
    proxy = bpy.data.objects["Ava_proxy"]
    corners = np.array([proxy.matrix_world @ v.co for v in proxy.data.vertices])
    centre, size = corners.mean(0), float(np.ptp(corners, 0).max())
    scene = bpy.context.scene
    cam = scene.camera
    cam.location = (centre[0], centre[1] - 3.2 * size, centre[2])
    cam.rotation_euler = (np.pi / 2, 0.0, 0.0)
    cam.data.lens = 50
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 320, 320, 100
    _, area, _ = view3d()
    space = area.spaces.active
    space.overlay.show_overlays = False
    space.show_gizmo = False
    space.shading.type = "SOLID"
    rv3d = space.region_3d
    rv3d.view_perspective = "PERSP"
    from mathutils import Euler, Vector
    rv3d.view_location = Vector(centre)
    rv3d.view_rotation = Euler((np.pi / 2, 0.0, 0.0)).to_quaternion()
    rv3d.view_distance = 3.0 * size
    bpy.context.scene.render.engine = "EMOTALKER_SPLATS"
    bpy.context.scene.view_settings.view_transform = "Standard"


def view_state(avatar) -> dict:
    """The viewport's frame and camera (as the engine computes them) and where its region sits in the
    area's screenshot, so that the test can render the same view with the core."""
    from blender_addon import engine

    _, area, region = view3d()
    view, K, model = engine.viewport_camera(area.spaces.active, region, region.data)
    viewmat = view @ np.array(avatar.matrix_world)
    return {"frame": bpy.context.scene.frame_current, "viewmat": viewmat.tolist(), "K": K.tolist(), "model": model,
            "width": region.width, "height": region.height,
            "area": [area.width, area.height], "region_offset": [region.x - area.x, region.y - area.y]}


def steps():
    """The session, one step per timer call (Blender redraws in between)."""
    avatar = setup_scene()
    frame_the_head(avatar)
    yield 1.0
    results["solid"] = screenshot("solid")
    bpy.app.timers.register(heartbeat, first_interval=HEARTBEAT, persistent=True)
    yield from scrub("scrub_solid")  # Blender's own redraw, the baseline
    bpy.app.timers.unregister(heartbeat)
    started = time.perf_counter()
    window, area, _ = view3d()
    with bpy.context.temp_override(window=window, screen=window.screen, area=area):  # as from the panel
        state = bpy.ops.emotalker.bake()
    assert state == {"RUNNING_MODAL"}, f"the bake did not start ({state}): {why_bake_fails(avatar)}"
    while not avatar.emotalker.baked:
        assert time.perf_counter() - started < 600, f"the bake did not finish: {why_bake_fails(avatar)}"
        yield 0.2
    results["bake_s"] = time.perf_counter() - started
    scene = bpy.context.scene
    scene.frame_set(1)
    _, area, _ = view3d()
    area.spaces.active.shading.type = "RENDERED"
    started = time.perf_counter()
    yield 0.05
    yield from settle(started, "first_final_s")
    results["rendered"] = screenshot("rendered")
    results["rendered_view"] = view_state(avatar)

    bpy.app.timers.register(heartbeat, first_interval=HEARTBEAT, persistent=True)
    yield from scrub("scrub")
    yield from settle(time.perf_counter(), "scrub_final_s")
    results["scrubbed"] = screenshot("scrubbed")
    results["scrubbed_view"] = view_state(avatar)

    rv3d = area.spaces.active.region_3d
    rv3d.view_perspective = "ORTHO"  # as a numpad view with Auto Perspective turns it
    yield 0.05
    yield from settle(time.perf_counter(), "orthographic_final_s")
    results["orthographic"] = screenshot("orthographic")
    results["orthographic_view"] = view_state(avatar)
    rv3d.view_perspective = "PERSP"

    scene.render.image_settings.file_format = "OPEN_EXR"
    scene.render.filepath = str(OUT / "f12.exr")
    bpy.ops.render.render(write_still=True)
    from blender_addon import camera as camera_conv

    V, K, W, H = camera_conv.scene_camera(scene, scene.camera, avatar)
    f12 = bpy.data.images.load(str(OUT / "f12.exr"))
    np.save(OUT / "f12.npy", np.array(f12.pixels[:], np.float32).reshape(H, W, 4))  # bottom row first
    results["f12_view"] = {"frame": scene.frame_current, "viewmat": V.tolist(), "K": K.tolist(), "width": W, "height": H}
    results["cache"] = str(OUT / "cache" / "Ava")


def scrub(key: str):
    """Change the frame SCRUB times, 0.1 s apart, while the heartbeat runs: how long the UI thread stalled
    (heartbeat gaps), and how long our view_draw and Blender's frame change took of it."""
    from blender_addon import engine

    scene = bpy.context.scene
    first, draws_before, frame_set_s = len(beats), len(engine.DRAW_SECONDS), []
    for frame in SCRUB:
        t = time.perf_counter()
        scene.frame_set(frame)
        frame_set_s.append(time.perf_counter() - t)
        yield 0.1
    gaps = np.diff(beats[first:]) * 1000
    draws = np.array(list(engine.DRAW_SECONDS)[draws_before:]) * 1000
    results[key] = {
        "heartbeat_gap_ms": {"max": float(gaps.max()), "median": float(np.median(gaps)),
                             "over_100": int((gaps > 100).sum()), "beats": len(gaps)},
        "view_draw_ms": {"median": float(np.median(draws)), "max": float(draws.max()), "n": len(draws)}
        if len(draws) else None,
        "frame_set_ms": {"median": float(np.median(frame_set_s) * 1000), "max": float(max(frame_set_s) * 1000)},
        "seconds": float(beats[-1] - beats[first])}


def settle(started: float, key: str):
    """Wait until every Rendered viewport shows its final image for the current frame and view."""
    from blender_addon import engine

    while time.perf_counter() < started + 120:
        if engine.LANES and engine.previews_settled():
            results[key] = time.perf_counter() - started
            view3d()[1].tag_redraw()
            yield 1.0  # one more redraw, with the final image (a busy machine's software OpenGL can take 0.3 s+)
            return
        yield 0.05
    results[key] = None


start(steps(), OUT, results)
