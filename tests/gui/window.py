"""What the real-window sessions share: the 3D view, a UI-thread heartbeat, and running a session as a
generator of timer steps that ends by writing results.json and quitting Blender."""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

import bpy

HEARTBEAT = 0.02
beats: list[float] = []


def view3d():
    """(window, the largest 3D view area, its WINDOW region)."""
    window = bpy.context.window_manager.windows[0]
    area = max((a for a in window.screen.areas if a.type == "VIEW_3D"), key=lambda a: a.width * a.height)
    region = next(r for r in area.regions if r.type == "WINDOW")
    return window, area, region


def heartbeat():
    """A timer on the UI thread: the gaps between its beats are how long the UI thread stalled."""
    beats.append(time.perf_counter())
    return HEARTBEAT


def start(steps, out: Path, results: dict) -> None:
    """Run the generator `steps` one step per timer call (each yields the seconds until the next, so Blender
    redraws in between); then write `results` (with "error": a traceback or None) and quit."""
    def tick():
        try:
            return next(steps)
        except StopIteration:
            finish(out, results, None)
        except Exception:
            finish(out, results, traceback.format_exc())
        return None

    out.mkdir(parents=True, exist_ok=True)
    bpy.context.preferences.view.show_splash = False
    bpy.app.timers.register(tick, first_interval=2.0)


def finish(out: Path, results: dict, error: str | None) -> None:
    results["error"] = error
    (out / "results.json").write_text(json.dumps(results, indent=2))
    from blender_addon import session
    session.shutdown()
    bpy.ops.wm.quit_blender()
