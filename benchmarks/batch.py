"""`bake-batch` on this machine: the local engine against Ray with the same workers, and what Ray adds per task.

    python benchmarks/batch.py --json out.json                 # 6 clips of 25 frames, 2 workers
    python benchmarks/batch.py --clips 12 --workers 2 --address auto   # Ray: a cluster `ray start` made

Figures (one run each: the machine may be shared, so the load average is printed and kept with them):
  local_clips_per_min, local_frames_s   `--engine local`: a spawned process per clip, `--workers` at once
  ray_clips_per_min, ray_frames_s       `--engine ray`: a Ray task per clip, `--workers` in flight, on a
                                        private cluster started here (its start counted: ray_init_s) or --address
  ray_init_s                            ray.init of that cluster alone
  ray_overhead_s_per_task               a no-op clip job through the Ray engine, one task at a time on a warm
                                        cluster: submit, schedule, run, settle (what Ray adds to each clip)
  local_overhead_s_per_task             the same through the local engine (a process spawned per clip)

The clips are the shipped demo avatar saying the demo line, `--frames` frames each (PLY + PNG at
`--resolution`), emotions in turn; every clip is baked afresh in a temp folder for each engine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # Ray's workers
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private, local cluster: no token prompt

from emotalker.bake.batch import run_batch  # noqa: E402
from emotalker.bake.clip import RunOptions  # noqa: E402
from emotalker.cli.bake import bake_clip_job  # noqa: E402
from emotalker.core.base.emotions import EMOTIONS  # noqa: E402

DATA = ROOT / "emotalker" / "data"


def noop_job(job) -> dict:
    """A clip job that does nothing: what is left of a task's time is the engine's."""
    return {"written": 0, "skipped": 0}


def write_manifest(folder: Path, clips: int, frames: int, resolution: int) -> Path:
    folder.mkdir(parents=True)
    manifest = folder / "batch.json"
    manifest.write_text(json.dumps({"format": "emotalker-batch/1", "defaults": {
        "avatar": str(DATA / "demo_avatar"), "audio": str(DATA / "demo_speech.wav"), "frames": f"1:{frames}",
        "resolution": resolution, "ply": True, "png": True},
        "clips": [{"id": f"clip{i:02d}", "emotion": EMOTIONS[i % len(EMOTIONS)]} for i in range(clips)]}))
    return manifest


def bake(engine: str, args, tmp: Path, ray) -> dict:
    manifest = write_manifest(tmp / f"bake-{engine}", args.clips, args.frames, args.resolution)
    job = functools.partial(bake_clip_job, run=RunOptions(device="cpu", progress="none", threads=args.threads))
    start = time.perf_counter()
    summary = run_batch(manifest, job, workers=args.workers, progress="none", engine=engine, ray=ray)
    seconds = time.perf_counter() - start
    if summary.failed or len(summary.done) != args.clips:
        raise SystemExit(f"{engine}: clips failed: {summary.failed}")
    return {f"{engine}_seconds": round(seconds, 2), f"{engine}_clips_per_min": round(args.clips / seconds * 60, 2),
            f"{engine}_frames_s": round(summary.frames / seconds, 2)}


def overhead(engine: str, args, tmp: Path, ray) -> float:
    """Seconds per no-op task, one at a time, after one warm-up batch (the cluster started, workers up)."""
    manifest = write_manifest(tmp / f"noop-{engine}", args.noop_tasks, 1, 8)
    status = tmp / f"noop-{engine}.status.json"
    if engine == "ray":  # one cluster for the warm-up and the measured tasks: keep the driver connected
        import ray as ray_module

        ray_module.init(address=ray.address, log_to_driver=False, configure_logging=False)
    try:
        run_batch(manifest, noop_job, workers=1, progress="none", engine=engine, ray=ray, status_path=status)
        for clip in Path(manifest.parent / "bake").iterdir():  # forget the warm-up: run every task again
            (clip / ".emotalker-clip.json").unlink()
        start = time.perf_counter()
        run_batch(manifest, noop_job, workers=1, progress="none", engine=engine, ray=ray, status_path=status)
        return round((time.perf_counter() - start) / args.noop_tasks, 4)
    finally:
        if engine == "ray":
            ray_module.shutdown()


def ray_init_seconds(address: str | None) -> float:
    import ray

    start = time.perf_counter()
    ray.init(address=address, log_to_driver=False, configure_logging=False)
    seconds = time.perf_counter() - start
    ray.shutdown()
    return round(seconds, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads a clip uses (default 1)")
    ap.add_argument("--noop-tasks", type=int, default=10)
    ap.add_argument("--address", default=None, help="Ray cluster (default: a private one started here)")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    from emotalker.bake.farm import RayOptions

    ray = RayOptions(address=args.address)
    figures = {"clips": args.clips, "frames_per_clip": args.frames, "resolution": args.resolution,
               "workers": args.workers, "threads": args.threads, "cpus": os.cpu_count(),
               "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="emotalker-batch-bench-") as tmp:
        tmp = Path(tmp)
        figures.update(bake("local", args, tmp, ray))
        figures["ray_init_s"] = ray_init_seconds(args.address)
        figures.update(bake("ray", args, tmp, ray))
        figures["local_overhead_s_per_task"] = overhead("local", args, tmp, ray)
        figures["ray_overhead_s_per_task"] = overhead("ray", args, tmp, ray)
    figures["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
