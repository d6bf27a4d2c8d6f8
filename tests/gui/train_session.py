"""Runs inside a real Blender window (tests/test_blender_gui.py starts it under Xvfb): training from Blender
as an animator does it. Starts the Train operator from the 3D view (modal), presses Esc once Stage 1 is
under way, starts it again (Resume), and waits for the avatar to be imported, while a 20 ms heartbeat
timer watches the UI thread. Writes results.json into OUT.

    blender --factory-startup --enable-event-simulate --python tests/gui/train_session.py -- OUT DATASET
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

OUT, DATASET = (Path(a).resolve() for a in sys.argv[sys.argv.index("--") + 1:][:2])
AVATAR = OUT / "avatar"
STEPS = {"neutral_steps": 200, "a2e_steps": 2, "emotion_steps": 20, "gaussians": 300}  # Esc comes well before Stage 1 ends; Stage 2 long enough for the panel (sampled every 50 ms) to show it
results: dict = {"blender": bpy.app.version_string}


def start_training() -> set:
    window, area, _ = view3d()
    with bpy.context.temp_override(window=window, screen=window.screen, area=area):  # as from the panel
        return bpy.ops.emotalker.train_avatar("EXEC_DEFAULT", dataset=str(DATASET), directory=str(AVATAR),
                                              name="Trained", open_report=False, **STEPS)


def watch(until, seconds: float, messages: list[str]):
    """Yield to Blender until `until()` holds, keeping every progress message the panel showed."""
    from blender_addon.job import RUNNING

    started = time.perf_counter()
    while not until():
        assert time.perf_counter() - started < seconds, f"timed out; last messages {messages[-3:]}"
        if RUNNING and (not messages or messages[-1] != RUNNING[0].message):
            messages.append(RUNNING[0].message)
        yield 0.05


def steps():
    import blender_addon
    from blender_addon.job import RUNNING

    blender_addon.register()
    yield 0.5
    bpy.app.timers.register(heartbeat, first_interval=HEARTBEAT, persistent=True)
    first = start_training()
    assert first == {"RUNNING_MODAL"}, f"the training did not start modally: {first}"
    messages: list[str] = []
    yield from watch(lambda: RUNNING and RUNNING[0].fraction > 5 / STEPS["neutral_steps"] / 3, 300, messages)
    window, area, _ = view3d()
    window.event_simulate(type="ESC", value="PRESS", x=area.x + area.width // 2, y=area.y + area.height // 2)
    window.event_simulate(type="ESC", value="RELEASE", x=area.x + area.width // 2, y=area.y + area.height // 2)
    yield from watch(lambda: not RUNNING, 120, messages)
    results["cancelled"] = {"messages": messages, "imported": "Trained" in bpy.data.objects,
                            "checkpoints": sorted(p.name for p in (AVATAR / "checkpoints").glob("*"))}
    started = time.perf_counter()
    second = start_training()
    assert second == {"RUNNING_MODAL"}, f"the resumed training did not start modally: {second}"
    messages = []
    yield from watch(lambda: not RUNNING, 900, messages)
    results["resumed"] = {"messages": messages, "seconds": time.perf_counter() - started,
                          "imported": "Trained" in bpy.data.objects, "report": (AVATAR / "report.html").is_file()}
    gaps = np.diff(beats) * 1000
    results["heartbeat_gap_ms"] = {"max": float(gaps.max()), "median": float(np.median(gaps)),
                                   "p99": float(np.percentile(gaps, 99)), "beats": len(gaps)}
    if "Trained" in bpy.data.objects:
        results["avatar_path"] = bpy.data.objects["Trained"].emotalker.avatar_path


start(steps(), OUT, results)
