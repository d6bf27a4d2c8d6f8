"""`bake-batch --engine ray` on a real two-node Ray cluster (`ray start` on 127.0.0.1), against `--engine local`.

Six tiny clips of the shipped demo avatar (two bad: an unknown emotion, a missing audio file). The good
ones must come out byte-identical to the local engine's, the bad ones reported with their one-line
errors and the exit status 1. SIGTERM stops the Ray tasks (exit 143) and a re-run resumes. Then the six
again with the second node killed (kill -9 of its raylet, then of its worker processes:
tests/ray_cluster.py says why) while it bakes a clip: that clip is retried on the head node, resumes the
lost task's frames, and no frame is written twice or left partial. Needs the `farm` extra (ray);
skipped, saying so, without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the farm extra is not installed (pip install -e '.[farm]'): no Ray cluster test")

from ray_cluster import Cluster, ray_env  # noqa: E402  (tests/ is on sys.path: conftest's folder)

pytestmark = pytest.mark.slow

DEMO = Path(__file__).resolve().parents[1] / "emotalker" / "data"
N_FRAMES = 32
GOOD = {"a": "happy", "b": "sad", "c": "angry", "d": "surprised"}
BAD = {"bored": "--emotion: unknown emotion 'bored'", "mute": "mute.wav: audio file not found"}


def write_batch(folder: Path, good: tuple[str, ...] = tuple(GOOD), bad: bool = True) -> Path:
    folder.mkdir(parents=True)
    speech = str(DEMO / "demo_speech.wav")
    clips = [{"id": clip, "audio": speech, "emotion": GOOD[clip]} for clip in good]
    if bad:
        clips.insert(2, {"id": "bored", "audio": speech, "emotion": "bored"})
        clips.append({"id": "mute", "audio": "mute.wav", "emotion": "sad"})
    manifest = folder / "batch.json"
    manifest.write_text(json.dumps({"format": "emotalker-batch/1", "clips": clips, "defaults": {
        "avatar": str(DEMO / "demo_avatar"), "frames": f"1:{N_FRAMES}", "resolution": 32, "ply": True, "png": True}}))
    return manifest


def bake_batch(manifest: Path, *args: str) -> tuple[subprocess.Popen, list[str]]:
    cmd = [sys.executable, "-m", "emotalker.cli.main", "bake-batch", str(manifest), "--progress", "json",
           "--threads", "1", "--chunk", "2", *args]
    return subprocess.Popen(cmd, env=ray_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), cmd


def finish(process: subprocess.Popen, manifest: Path) -> dict:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 1, f"exit {process.returncode}\n{out}\n{err}"  # 1: some clips failed
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    summary = json.loads(manifest.with_name("batch.summary.json").read_text())
    assert lines[-1] == {"stage": "bake-batch", "done": True, **summary}
    clip_lines = {line["clip"]: line["state"] for line in lines[:-1]}
    assert {clip: clip_lines[clip] for clip in [*GOOD, *BAD]} == {**dict.fromkeys(GOOD, "done"),
                                                                   **dict.fromkeys(BAD, "failed")}
    return summary


def outputs(folder: Path, clips: tuple[str, ...] = tuple(GOOD)) -> dict[str, str]:
    """Every output file of the clips (the batch's dot-file records aside) -> its SHA-256."""
    return {f"{clip}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
            for clip in clips for p in sorted((folder / "bake" / clip).iterdir()) if not p.name.startswith(".")}


def check_summary(summary: dict, folder: Path) -> None:
    assert sorted(summary["done"]) == sorted(GOOD) and summary["exit_code"] == 1
    assert sorted(summary["failed"]) == sorted(BAD)
    for clip, reason in BAD.items():
        got = summary["failed"][clip]
        assert reason in got and "\n" not in got, got
    assert summary["failed"]["mute"] == f"{folder / 'mute.wav'}: audio file not found"
    assert summary["frames"] == len(GOOD) * N_FRAMES


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The batch with `--engine local`, started: the cluster starts meanwhile (the machine may be small)."""
    manifest = write_batch(tmp_path_factory.mktemp("local") / "batch")
    process = bake_batch(manifest, "--workers", "2")[0]
    yield process, manifest
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def cluster(local_run):
    cluster = Cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
        assert not any(node.pids() for node in cluster.nodes), "a Ray process outlived the test"


@pytest.fixture(scope="module")
def local(local_run) -> tuple[dict, dict]:
    process, manifest = local_run
    summary = finish(process, manifest)
    assert summary["engine"] == "local"
    check_summary(summary, manifest.parent)
    return outputs(manifest.parent), summary


def test_ray_cluster_bakes_the_same_bytes_as_local(cluster, local, tmp_path):
    manifest = write_batch(tmp_path / "batch")
    summary = finish(bake_batch(manifest, "--engine", "ray", "--address", cluster.address)[0], manifest)
    assert summary["engine"] == "ray" and not summary["retried"]
    check_summary(summary, manifest.parent)
    assert outputs(manifest.parent) == local[0]
    # Ray kept its worker processes: each loaded the avatar once, whatever the clips it baked.
    records = [json.loads((manifest.parent / "bake" / clip / ".emotalker-clip.json").read_text())["result"]
               for clip in GOOD]
    loads = {}
    for result in records:
        loads.setdefault(result["pid"], []).append(result["avatar_loads"])
    assert all(counts == [1] * len(counts) for counts in loads.values()), loads


def test_sigterm_stops_the_ray_tasks_and_a_rerun_resumes(cluster, local, tmp_path):
    manifest = write_batch(tmp_path / "batch", good=("a", "b"), bad=False)  # two clips: one a node
    bake_root = manifest.parent / "bake"
    process, _ = bake_batch(manifest, "--engine", "ray", "--address", cluster.address)
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline and not list(bake_root.glob("*/*.png")):
        time.sleep(0.02)
    assert baking_workers(cluster), "no Ray worker was baking a clip when SIGTERM was to be sent"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, f"exit {process.returncode}\n{out}\n{err}"
    assert "interrupted by SIGTERM: stopped clips" in err
    summary = json.loads(manifest.with_name("batch.summary.json").read_text())
    assert summary["interrupted_by"] == "SIGTERM" and summary["interrupted"]
    # The stopped clips' tasks were cancelled: no worker process is still baking one (within 10 s).
    deadline = time.monotonic() + 10
    while (baking := baking_workers(cluster)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not baking, f"Ray workers still baking 10 s after SIGTERM: {baking}"
    rerun, _ = bake_batch(manifest, "--engine", "ray", "--address", cluster.address)
    out, err = rerun.communicate(timeout=300)
    summary = json.loads(manifest.with_name("batch.summary.json").read_text())
    assert rerun.returncode == 0 and sorted(summary["done"] + summary["skipped"]) == ["a", "b"], out + err
    assert not list(bake_root.rglob("*.part"))
    assert outputs(manifest.parent, ("a", "b")) == {k: v for k, v in local[0].items() if k[0] in "ab"}


def baking_workers(cluster: Cluster) -> list[int]:
    """The cluster's worker processes running a clip's task (Ray titles them after the task's function)."""
    return [pid for node in cluster.nodes for pid in node.pids() if command(pid).startswith("ray::_ray_clip")]


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def test_a_lost_node_loses_no_clip_and_no_frame(cluster, local, tmp_path):
    manifest = write_batch(tmp_path / "batch")
    bake_root = manifest.parent / "bake"
    watcher = FrameWatcher(bake_root)
    process, _ = bake_batch(manifest, "--engine", "ray", "--address", cluster.address)
    killed = kill_second_node_midway(cluster, bake_root, process)
    watcher.stop()
    summary = finish(process, manifest)
    assert killed, "the second node never held a clip midway: nothing was killed"
    clip, frames_then = killed
    check_summary(summary, manifest.parent)
    assert list(summary["retried"]) == [clip] and "Ray task lost" in summary["retried"][clip], summary["retried"]
    record = json.loads((bake_root / clip / ".emotalker-clip.json").read_text())["result"]
    assert record["skipped"] >= frames_then >= 1  # the retry resumed from the lost task's frames
    assert outputs(manifest.parent) == local[0]
    assert not list(bake_root.rglob("*.part")), "a partial frame was left behind"
    assert watcher.rewritten() == {}, "frames written twice"


def kill_second_node_midway(cluster: Cluster, bake_root: Path, batch: subprocess.Popen) -> tuple[str, int] | None:
    """Wait until the second node's worker holds a clip's folder lock with some but not all frames written,
    then kill -9 that node's raylet -> (the clip, its frames then); None if the batch ended first."""
    deadline = time.monotonic() + 240
    while batch.poll() is None and time.monotonic() < deadline:
        clip = clip_locked_by(cluster.second.pids(), bake_root)
        # Complete frames: the PNG is written after the PLY (sinks in order), so a frame with its PNG has both.
        frames = len(list((bake_root / clip).glob(f"{clip}_*.png"))) if clip else 0
        if clip and 1 <= frames <= N_FRAMES // 2:
            cluster.second.kill()
            return clip, frames
        time.sleep(0.01)
    return None


def clip_locked_by(pids: list[int], bake_root: Path) -> str | None:
    """The good clip whose folder lock (sequence.py's flock) one of `pids` holds, read from /proc/locks."""
    inodes = {}
    for clip in GOOD:
        try:
            inodes[(bake_root / clip / ".emotalker-run.lock").stat().st_ino] = clip
        except OSError:
            pass
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.replace("->", "").split()  # "1: FLOCK ADVISORY WRITE <pid> <maj>:<min>:<inode> 0 EOF"
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[4].isdigit() and int(fields[4]) in pids:
            clip = inodes.get(int(fields[5].rsplit(":", 1)[1]))
            if clip:
                return clip
    return None


class FrameWatcher:
    """Notes every frame file's inode every 20 ms: a frame moved into place twice shows a second inode."""

    def __init__(self, root: Path):
        self.root, self.seen, self._stop = root, {}, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._look()
            time.sleep(0.02)

    def _look(self) -> None:
        for clip in GOOD:
            try:
                entries = list(os.scandir(self.root / clip))
            except OSError:
                continue
            for entry in entries:
                if entry.name.endswith((".ply", ".png")) and not entry.name.startswith("."):
                    try:
                        self.seen.setdefault(f"{clip}/{entry.name}", set()).add(entry.inode())
                    except OSError:
                        pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._look()

    def rewritten(self) -> dict[str, set[int]]:
        return {name: inodes for name, inodes in self.seen.items() if len(inodes) > 1}
