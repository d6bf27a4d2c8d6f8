"""The Rendered viewport's preview path outside Blender (issue 14): the add-on's own client code
(blender_addon/preview.py) and a real worker, on the demo avatar, against the synchronous path.

    python benchmarks/viewport.py [--width 1280 --height 720] [--changes 50] [--json out.json]

The demo clip is baked first (PLY only, as the add-on's bake does), so that every request carries the
bake's curves and audio like the add-on's. Then, with the camera of a 1280x720 viewport:

  progressive (PreviewLane: its own worker process, the view_draw side only posts and reads)
    ui_ms_median          UI-thread time of one draw: request() + image() (outside Blender the
                          texture upload is not included; tests/test_blender_gui.py measures view_draw)
    first_preview_ms      a frame change to the first (quarter-size) image of that frame, median
    full_res_ms           a frame change to its full-size image while the frame holds still, median
    scrub_previews_per_s  images delivered a second while the frame changes every 1/30 s (--changes)
  synchronous (every draw waits for the worker's full-size render, as view_draw did before)
    sync_ui_ms_median, sync_first_preview_ms, sync_full_res_ms (all the same wait), and
    sync_scrub_previews_per_s (one image a draw).

Both paths use one worker process each, started and warmed up before timing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blender_addon.preview import PreviewLane, PreviewRequest, render_frame  # noqa: E402
from blender_addon.worker_client import WorkerClient  # noqa: E402


def bake_demo(out: Path) -> tuple[Path, Path, Path, int]:
    """The demo clip's FLAME curves (PLY bake); returns (avatar, curves, audio, last frame)."""
    from emotalker.bake.clip import ClipSpec, RunOptions, bake_clip
    from emotalker.bake.demo import DEMO_AVATAR, DEMO_SPEECH

    result = bake_clip(ClipSpec(avatar=str(DEMO_AVATAR), audio=str(DEMO_SPEECH), out=str(out), emotion="happy",
                                ply=True, name="bake"), RunOptions(device="cpu", progress="none"))
    return DEMO_AVATAR, Path(result.outputs["flame_curves"]), DEMO_SPEECH, result.frame_end


def viewport_params(avatar: Path, curves: Path, audio: Path, width: int, height: int, cache: Path):
    """render_frame params of a perspective viewport looking at the head (frame filled in per request)."""
    from emotalker.core.render.camera import front_camera
    from emotalker.core.rig.flame import FlameModel

    camera = front_camera(FlameModel.load(avatar / "flame_model.npz").v_template, height, width)
    return {"avatar": str(avatar), "cache": str(cache), "viewmat": camera.viewmat.tolist(), "K": camera.K.tolist(),
            "width": width, "height": height, "curves": str(curves), "audio": str(audio)}


def wait_image(lane: PreviewLane, key: str, final: bool, start: float, timeout: float = 120.0) -> float:
    """Seconds from `start` until the lane holds an image of `key` (the full-size one when `final`)."""
    while True:
        image = lane.image()
        if image is not None and image.key == key and (image.final or not final):
            return time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"no image of the request in {timeout} s: {lane.error(key)}")
        time.sleep(0.001)


def progressive(base: dict, width: int, height: int, frames: list[int], changes: int) -> dict:
    client = WorkerClient(sys.executable)
    lane = PreviewLane(lambda: client)
    request = lambda f: PreviewRequest(width, height, ((1.0, {**base, "frame": f}),))  # noqa: E731
    try:
        warm = request(frames[0])
        lane.request(warm)
        wait_image(lane, warm.key, True, time.perf_counter())
        first, full = [], []
        for frame in frames[1:6]:  # hold still on each: the time to the preview, then to full size
            req = request(frame)
            start = time.perf_counter()
            lane.request(req)
            first.append(wait_image(lane, req.key, False, start))
            full.append(wait_image(lane, req.key, True, start))
        ui, delivered, last_version = [], 0, lane.image().version
        start = time.perf_counter()
        for i in range(changes):  # scrubbing: a new frame every 1/30 s, a draw at each
            t = time.perf_counter()
            lane.request(request(frames[(i + 6) % len(frames)]))
            image = lane.image()
            ui.append(time.perf_counter() - t)
            if image is not None and image.version != last_version:
                delivered, last_version = delivered + 1, image.version
            time.sleep(max(0.0, start + (i + 1) / 30 - time.perf_counter()))
        seconds = time.perf_counter() - start
    finally:
        lane.close()
        client.close()
    return {"ui_ms_median": 1000 * statistics.median(ui), "first_preview_ms": 1000 * statistics.median(first),
            "full_res_ms": 1000 * statistics.median(full), "scrub_previews_per_s": delivered / seconds}


def synchronous(base: dict, frames: list[int], changes: int) -> dict:
    client = WorkerClient(sys.executable)
    try:
        render_frame(client, {**base, "frame": frames[0]})  # warm-up: the avatar loaded, the kernels compiled
        waits = []
        for i in range(min(changes, 20)):
            t = time.perf_counter()
            render_frame(client, {**base, "frame": frames[(i + 1) % len(frames)]})
            waits.append(time.perf_counter() - t)
    finally:
        client.close()
    ms = 1000 * statistics.median(waits)
    return {"sync_ui_ms_median": ms, "sync_first_preview_ms": ms, "sync_full_res_ms": ms,
            "sync_scrub_previews_per_s": 1000 / ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--changes", type=int, default=50, help="frame changes while scrubbing")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        avatar, curves, audio, last = bake_demo(Path(tmp) / "bake")
        frames = list(range(1, last + 1))
        out = {"width": args.width, "height": args.height, "changes": args.changes}
        out.update(synchronous(viewport_params(avatar, curves, audio, args.width, args.height, Path(tmp) / "sync"),
                               frames, args.changes))
        out.update(progressive(viewport_params(avatar, curves, audio, args.width, args.height, Path(tmp) / "lane"),
                               args.width, args.height, frames, args.changes))
    out["load_average_after"] = os.getloadavg()[0]
    for key in ("ui_ms_median", "first_preview_ms", "full_res_ms", "scrub_previews_per_s"):
        print(f"{key:<22} {out[key]:10.1f}   synchronous {out['sync_' + key]:10.1f}")
    print(f"load average after: {out['load_average_after']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
