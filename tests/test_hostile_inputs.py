"""Hostile and careless input (issue 18): each case ends in one clear line and exit status 2, under a
memory limit where the case is about memory, and leaves the files that were there before as they were.

The commands run as subprocesses (`python -m emotalker ...`) with RLIMIT_AS set, so that a regression
fails here with a MemoryError instead of growing until the machine's OOM killer steps in.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from bake_fixture import make_speech, make_tiny_avatar

REPO = Path(__file__).resolve().parent.parent
# A tiny bake peaks under 2 GiB of address space; a frame count or audio length that escapes its limit
# asks for far more.
MEMORY_LIMIT = 3 << 30


def run_cli(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m emotalker ARGS` under MEMORY_LIMIT."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))  # noqa: E731
    return subprocess.run([sys.executable, "-m", "emotalker", *args], input=stdin, capture_output=True, text=True,
                          env=env, preexec_fn=limit, timeout=timeout)


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def assert_refused(proc: subprocess.CompletedProcess, *expected: str) -> None:
    """Exit status 2 and one line on stderr holding every `expected` piece, no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    for piece in expected:
        assert piece in lines[0], (piece, lines[0])


def write_wav_header_rate(path: Path, rate: int, n_samples: int) -> Path:
    """A 16-bit mono PCM WAV of `n_samples` of noise whose header claims `rate` Hz."""
    import numpy as np

    data = (np.random.default_rng(0).integers(-8000, 8000, n_samples)).astype("<i2").tobytes()
    header = (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate,
              rate * 2, 2, 16) + b"data" + struct.pack("<I", len(data)))
    path.write_bytes(header + data)
    return path


@pytest.fixture(scope="module")
def baked(tmp_path_factory):
    """An avatar, a 1.2 s clip (30 frames) and an out folder already holding a bake and a user's file."""
    root = tmp_path_factory.mktemp("hostile")
    make_tiny_avatar(root / "avatar")
    make_speech(root / "speech.wav", seconds=1.2)
    out = root / "out"
    proc = run_cli("bake", str(root / "avatar"), "--audio", str(root / "speech.wav"), "--out", str(out),
                   "--emotion", "happy", "--frames", "1:3", "--progress", "none", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    (out / "notes.txt").write_text("the user's own file")
    return root


def bake_args(root: Path, *extra: str) -> list[str]:
    return ["bake", str(root / "avatar"), "--audio", str(root / "speech.wav"), "--out", str(root / "out"),
            "--progress", "none", "--device", "cpu", *extra]


# --- 1. memory exhaustion: limits checked before anything is allocated ---------------------------


@pytest.mark.parametrize("extra, expected", [
    (["--emotion", "happy", "--fps", "1e9"], ["--fps: fps must be a positive number in 1..240, got 1000000000.0"]),
    (["--emotion", "happy", "--fps", "1e-9"], ["--fps: fps must be a positive number in 1..240"]),
    (["--emotion", "happy", "--fps", "nan"], ["--fps: fps must be a positive number in 1..240"]),
    (["--emotion", "happy", "--png", "--resolution", "0"], ["--resolution: the resolution must be an integer in 1..16384"]),
    (["--emotion", "happy", "--png", "--resolution", "100000"], ["--resolution", "1..16384, got 100000"]),
    (["--emotion", "happy", "--frames", "1:1000000000"], ["--frames: 1:1000000000 reaches outside"]),
    (["--emotion", "happy", "--chunk", "1000000000"], ["--chunk: the chunk must be an integer in 1..256"]),
    (["--emotion", "happy", "--threads", "1000000"], ["--threads: the thread count must be an integer in 1..1024"]),
    (["--emotion", "happy", "--max-frames", "10"], ["speech.wav: 1.2 s of audio at 25 fps is 30 frames, more than "
                                                    "the limit of 10 (--max-frames raises it)"]),
    (["--emotion", "happy", "--max-seconds", "0.5"], ["speech.wav: audio lasts 1 s by its header, more than the "
                                                      "limit of 0.5 s (--max-seconds raises it)"]),
])
def test_bake_options_beyond_the_limits_are_refused(baked, extra, expected):
    before = digests(baked / "out")
    assert_refused(run_cli(*bake_args(baked, *extra)), *expected)
    assert digests(baked / "out") == before


@pytest.mark.parametrize("fps", [1e9, 1e-9, 0.5, 241])
def test_a_tracks_file_asking_for_absurd_fps_is_refused(baked, tmp_path, fps):
    tracks = tmp_path / "tracks.json"
    tracks.write_text(json.dumps({"format": "emotalker-tracks/1", "fps": fps, "tracks": {}}))  # 60 bytes
    before = digests(baked / "out")
    assert_refused(run_cli(*bake_args(baked, "--tracks", str(tracks))),
                   f"{tracks}: fps must be a positive number in 1..240, got {fps!r}")
    assert digests(baked / "out") == before


def test_a_wav_whose_header_claims_1_hz_is_refused_before_decoding(baked, tmp_path):
    wav = write_wav_header_rate(tmp_path / "slow.wav", rate=1, n_samples=16000)  # 32 KB: 4.4 hours at 1 Hz
    before = digests(baked / "out")
    proc = run_cli("bake", str(baked / "avatar"), "--audio", str(wav), "--out", str(baked / "out"), "--emotion", "sad",
                   "--progress", "none", "--device", "cpu")
    assert_refused(proc, f"{wav}: audio lasts 16000 s by its header, more than the limit of 3600 s")
    assert digests(baked / "out") == before


@pytest.mark.parametrize("extra, expected", [
    (["--fps", "1e9"], "--fps: fps must be a positive number in 1..240, got 1000000000.0"),
    (["--audio", "SLOW"], "audio lasts 16000 s by its header, more than the limit of 3600 s"),
])
def test_a2e_refuses_absurd_fps_and_audio(baked, tmp_path, extra, expected):
    slow = write_wav_header_rate(tmp_path / "slow.wav", rate=1, n_samples=16000)
    args = ["a2e", str(baked / "avatar"), "--audio", str(baked / "speech.wav"), "--out", str(tmp_path / "c.npz"),
            "--device", "cpu", *[str(slow) if a == "SLOW" else a for a in extra]]
    assert_refused(run_cli(*args), expected)
    assert not (tmp_path / "c.npz").exists()


def test_a_batch_manifest_beyond_the_limits_is_refused_before_any_clip_runs(baked, tmp_path):
    manifest = tmp_path / "batch.json"
    for field, value, expected in [("fps", 1e9, "clips[1].fps (b): fps must be a positive number in 1..240"),
                                   ("resolution", 100000, "clips[1].resolution (b): the resolution must be an integer "
                                                          "in 1..16384, got 100000")]:
        manifest.write_text(json.dumps({"format": "emotalker-batch/1",
                                        "defaults": {"avatar": str(baked / "avatar"), "audio": str(baked / "speech.wav"),
                                                     "emotion": "happy", "frames": "1:2"},
                                        "clips": [{"id": "a"}, {"id": "b", field: value}]}))
        assert_refused(run_cli("bake-batch", str(manifest), "--progress", "none"), str(manifest), expected)
        assert not (tmp_path / "bake").exists()


def ask_worker(requests: list[dict], timeout: float = 120) -> dict:
    """Send each request to a `python -m emotalker worker` (under MEMORY_LIMIT) and wait for its answer
    before the next; -> {id: reply}. Ends with a shutdown and checks the worker exits cleanly."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))  # noqa: E731
    proc = subprocess.Popen([sys.executable, "-m", "emotalker", "worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, preexec_fn=limit)
    replies = {}
    try:
        for request in requests:
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            for line in proc.stdout:
                reply = json.loads(line)
                if reply.get("id") == request["id"] and ("result" in reply or "error" in reply):
                    replies[request["id"]] = reply
                    break
        proc.stdin.write(json.dumps({"method": "shutdown"}) + "\n")
        proc.stdin.close()
        assert proc.wait(timeout=timeout) == 0
    finally:
        proc.kill()
    return replies


def test_the_worker_answers_a_bake_beyond_the_limits_with_an_input_error(baked, tmp_path):
    clip = {"avatar": str(baked / "avatar"), "audio": str(baked / "speech.wav"), "out": str(tmp_path / "out"),
            "emotion": "happy"}
    replies = ask_worker([{"id": 1, "method": "bake", "params": {"clip": {**clip, "fps": 1e9}}},
                          {"id": 2, "method": "bake", "params": {"clip": {**clip, "resolution": 0, "png": True}}},
                          {"id": 3, "method": "environment"}])
    assert replies[1]["error"] == {"kind": "input", "message": "--fps: fps must be a positive number in 1..240, "
                                                               "got 1000000000.0"}
    assert replies[2]["error"]["kind"] == "input" and "1..16384, got 0" in replies[2]["error"]["message"]
    assert "result" in replies[3]
    assert not (tmp_path / "out").exists()


# --- 2. --overwrite deletes only the bake's own frames ---------------------------------------------


def test_overwrite_keeps_a_users_files_that_share_the_name(baked, tmp_path):
    from emotalker.cli.main import main

    out = tmp_path / "out"
    base = ["bake", str(baked / "avatar"), "--audio", str(baked / "speech.wav"), "--out", str(out), "--name", "take",
            "--frames", "1:3", "--ply", "--png", "--resolution", "16", "--progress", "none", "--device", "cpu"]
    out.mkdir()
    (out / "take_final.ply").write_bytes(b"the user's final take")
    (out / "take_reference.png").write_bytes(b"the user's reference")
    (out / "take_0001.ply").write_bytes(b"not six digits: not a frame")
    users = digests(out)
    assert main([*base, "--emotion", "happy"]) == 0  # the user's files are not frames: nothing to refuse
    happy = digests(out)
    assert main([*base, "--emotion", "sad", "--overwrite"]) == 0
    after = digests(out)
    assert {n: after[n] for n in users} == users
    assert after["take_000001.ply"] != happy["take_000001.ply"] and after["take_000003.png"] != happy["take_000003.png"]


def test_a_bake_never_touches_the_frames_of_a_longer_name(baked, tmp_path):
    from emotalker.cli.main import main

    out = tmp_path / "out"
    base = ["bake", str(baked / "avatar"), "--audio", str(baked / "speech.wav"), "--out", str(out), "--frames", "1:3",
            "--progress", "none", "--device", "cpu"]
    assert main([*base, "--name", "a_b", "--emotion", "happy"]) == 0
    stale = out / ".a_b_000004.k2j4h5g6.ply.part"
    stale.write_bytes(b"")  # not a's temporary either
    a_b = digests(out)
    assert main([*base, "--name", "a", "--emotion", "sad", "--overwrite"]) == 0
    assert main([*base, "--name", "a", "--emotion", "angry", "--overwrite"]) == 0
    after = digests(out)
    kept = {n: d for n, d in a_b.items() if n.startswith(("a_b", ".a_b"))}
    assert kept and {n: after[n] for n in kept} == kept
    assert sorted(n for n in after if n.startswith("a_0")) == [f"a_{f:06d}.ply" for f in (1, 2, 3)]


# --- 3. corrupted weights and non-finite frames ---------------------------------------------------


def poison_tensor(path: Path, name: str, value: float = float("nan")) -> None:
    """Overwrite the first value of float32 tensor `name` in a safetensors file in place (flipped bytes)."""
    raw = bytearray(path.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    start = 8 + n + json.loads(raw[8:8 + n])[name]["data_offsets"][0]
    raw[start:start + 4] = struct.pack("<f", value)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("tensor, value", [("means", float("nan")), ("d_log_scales", float("inf"))])
def test_a_corrupted_weights_file_is_refused_naming_the_tensor(baked, tmp_path, tensor, value):
    import shutil

    avatar = tmp_path / "avatar"
    shutil.copytree(baked / "avatar", avatar)
    poison_tensor(avatar / "neutral.safetensors", tensor, value)
    before = digests(baked / "out")
    proc = run_cli("bake", str(avatar), "--audio", str(baked / "speech.wav"), "--out", str(baked / "out"),
                   "--emotion", "happy", "--progress", "none", "--device", "cpu")
    assert_refused(proc, f"{avatar / 'neutral.safetensors'}: tensor {tensor!r} holds 1 NaN or infinite values of",
                   "the file is corrupt")
    assert digests(baked / "out") == before


def test_frames_that_come_out_non_finite_are_refused_before_they_are_written(baked, tmp_path, monkeypatch):
    from emotalker.bake.clip import ClipSpec, RunOptions, bake_clip
    from emotalker.core.base.errors import InputError
    from emotalker.core.models.avatar import Avatar

    evaluate = Avatar.evaluate

    def overflowing(self, conditions):  # what finite but absurd weights or curves can make of a frame
        import torch

        batch = evaluate(self, conditions)
        with torch.inference_mode():
            batch.sh[-1, 0, 0, 0] = float("inf")
        return batch

    monkeypatch.setattr(Avatar, "evaluate", overflowing)
    out = tmp_path / "out"
    clip = ClipSpec(avatar=str(baked / "avatar"), audio=str(baked / "speech.wav"), out=str(out), emotion="happy",
                    ply=True, png=True, resolution=16, frames="1:3")
    with pytest.raises(InputError) as error:
        bake_clip(clip, RunOptions(progress="none", chunk=4))
    assert str(error.value) == (f"{baked / 'avatar'}: frames 1..4: Gaussian 'sh' holds 1 NaN or infinite values of "
                                f"{4 * 170 * 4 * 3}; the avatar or the FLAME curves are corrupt; nothing of these "
                                f"frames was written")
    assert not list(out.glob("speech_*")) and not list(out.glob(".*.part"))


# --- the worker answers every malformed request and stays alive --------------------------------------


def test_one_bad_request_line_never_ends_the_worker():
    bad = ['{"id": [1, 2], "method": "environment"}', '{"id": {"a": 1}, "method": "environment"}',
           '{"method": "cancel", "params": [1]}', '{"id": 5, "method": "cancel", "params": {"target": [1]}}',
           '{"id": 6, "method": "bake", "params": {}}', '{"id": 7, "method": "bake", "params": {"clip": {"avatar": 1}}}',
           'not json at all', '[]']
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "emotalker", "worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        proc.stdin.write("\n".join(bad) + '\n{"id": "alive", "method": "environment"}\n')
        proc.stdin.flush()
        replies = []
        for line in proc.stdout:
            replies.append(json.loads(line))
            if replies[-1].get("id") == "alive":
                break
        proc.stdin.write('{"method": "shutdown"}\n')
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    errors = [r["error"] for r in replies if "error" in r]
    assert len(errors) == len(bad), replies
    assert [e["kind"] for e in errors] == ["protocol"] * 4 + ["input"] * 2 + ["protocol"] * 2
    assert errors[4]["message"] == "bake params: missing field clip"
    assert "result" in replies[-1] and replies[-1]["result"]["protocol"] == "emotalker-worker/1"


def test_require_finite_names_the_tensor_and_ignores_a_sum_that_merely_overflows():
    import torch

    from emotalker.core.base.errors import InputError
    from emotalker.core.base.fileio import require_finite

    huge = torch.full((4,), 3e38)  # finite values whose float32 sum is infinite
    require_finite({"huge": huge, "ids": torch.arange(3)}, "w.safetensors")
    for bad in (float("nan"), float("inf"), -float("inf")):
        values = torch.zeros(5)
        values[2] = bad
        with pytest.raises(InputError, match=r"'means' holds 1 NaN or infinite values of 5"):
            require_finite({"huge": huge, "means": values}, "w.safetensors")


# --- 5. bake-batch: a lost worker, SIGTERM and SIGINT, shared out folders, manifest types -----------


def batch_manifest(folder: Path, baked: Path, clips: list, **doc) -> Path:
    """`folder`/batch.json: tiny clips (frames 1..4) of the baked avatar and speech; `doc` replaces top-level keys."""
    path = folder / "batch.json"
    defaults = {"avatar": str(baked / "avatar"), "audio": str(baked / "speech.wav"), "emotion": "happy",
                "frames": "1:4"}
    path.write_text(json.dumps({"format": "emotalker-batch/1", "defaults": defaults, "clips": clips, **doc}))
    return path


def held_bake_job(job):
    """A batch clip's real bake, except that clip 'held', on its first try, bakes frame 1, writes its pid to
    <out>/held.pid and waits there for the test to kill it: a worker lost mid-clip, at a known point."""
    import dataclasses
    import time

    from emotalker.bake.clip import RunOptions
    from emotalker.cli.bake import bake_clip_job

    run = RunOptions(device="cpu")
    pid_file = job.out / "held.pid"
    if job.id == "held" and not pid_file.exists():
        bake_clip_job(dataclasses.replace(job, spec=dataclasses.replace(job.spec, frames="1:1")), run)
        (job.out / "held.tmp").write_text(str(os.getpid()))
        (job.out / "held.tmp").rename(pid_file)  # whole, or not there
        time.sleep(120)
        raise RuntimeError("the test did not kill the held clip")
    return bake_clip_job(job, run)


def children_of(pid: int) -> set[int]:
    """The child processes of every thread of process `pid`."""
    return {int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()}


def wait_until(ready, what: str, timeout: float = 240) -> None:
    """Poll `ready()` until it is true (an event: a file appears, processes end); fail after `timeout`."""
    import time

    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def test_a_lost_worker_fails_only_its_own_clip_which_runs_again_and_resumes(baked, tmp_path):
    import signal
    import threading

    from emotalker.bake.batch import run_batch

    manifest = batch_manifest(tmp_path, baked, [{"id": "held"}, {"id": "b"}, {"id": "c"}])
    pid_file, ended, killed = tmp_path / "bake" / "held" / "held.pid", threading.Event(), []

    def kill_the_held_clip():
        wait_until(lambda: pid_file.exists() or ended.is_set(), "the held clip has baked its first frame")
        if pid_file.exists():
            pid = int(pid_file.read_text())
            killed.append((pid, pid in children_of(os.getpid())))  # a process of the batch's, found via its parent
            os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_the_held_clip)
    killer.start()
    try:
        summary = run_batch(manifest, held_bake_job, workers=2, progress="none")
    finally:
        ended.set()
        killer.join()
    assert len(killed) == 1 and killed[0][1], killed
    assert summary.retried == {"held": "worker process lost (killed by SIGKILL)"}
    assert sorted(summary.done) == ["b", "c", "held"] and not summary.failed and summary.exit_code == 0
    status = json.loads((tmp_path / "batch.status.json").read_text())
    assert status["clips"] == {"held": "done", "b": "done", "c": "done"} and status["retried"] == summary.retried
    record = json.loads((tmp_path / "bake" / "held" / ".emotalker-clip.json").read_text())
    assert (record["result"]["skipped"], record["result"]["written"]) == (1, 3)  # the retry resumed after frame 1
    for clip in ("held", "b", "c"):
        frames = sorted(p.name for p in (tmp_path / "bake" / clip).glob(f"{clip}_0*.ply"))
        assert frames == [f"{clip}_{frame:06d}.ply" for frame in range(1, 5)]


def session_processes(session: int) -> list[str]:
    """'pid state name' of each process of `session` that is still running (zombies have ended)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # it ended meanwhile
        state, _ppid, _group, sid = text.rsplit(")", 1)[1].split()[:4]
        if int(sid) == session and state != "Z":
            alive.append(f"{stat.parent.name} {state} {text.split('(', 1)[1].rsplit(')', 1)[0]}")
    return alive


def interrupt_batch(baked: Path, tmp_path: Path, signame: str, to_group: bool) -> list[str]:
    """Start `bake-batch` on three tiny clips, two at a time, and send it `signame` once a clip has baked a frame
    (to its process group: what Ctrl-C in a terminal does); check that it exits with the shell's status for
    the signal and one line naming the clips it stopped, that none of its processes is left and that the status
    file says which clips were interrupted. -> the command line, to run again."""
    import signal

    manifest = batch_manifest(tmp_path, baked, [{"id": "a"}, {"id": "b"}, {"id": "c"}])
    args = ["bake-batch", str(manifest), "--workers", "2", "--progress", "none", "--chunk", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    # A session of its own: every process the batch starts (clips, resource tracker) can be found in it.
    proc = subprocess.Popen([sys.executable, "-m", "emotalker", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        wait_until(lambda: any(tmp_path.glob("bake/*/*_000001.ply")) or proc.poll() is not None,
                   "a clip has baked its first frame")
        assert proc.poll() is None, proc.stderr.read()  # clip c waits for a or b: the batch is still running
        (os.killpg if to_group else os.kill)(proc.pid, getattr(signal, signame))
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    wait_until(lambda: not session_processes(proc.pid), "every process of the batch has ended")
    state = json.loads((tmp_path / "batch.status.json").read_text())
    stopped = [clip for clip, s in state["clips"].items() if s == "interrupted"]
    assert proc.returncode == 128 + getattr(signal, signame) and state["interrupted_by"] == signame
    assert stopped and set(state["clips"].values()) <= {"done", "interrupted", "pending"}, state
    assert stderr.splitlines() == [f"emotalker: interrupted by {signame}: stopped clips {', '.join(stopped)}; "
                                   f"finished clips and frames are kept and a re-run resumes (status: "
                                   f"{tmp_path / 'batch.status.json'})"]
    return args


def test_sigterm_ends_every_process_of_bake_batch_and_a_rerun_finishes(baked, tmp_path):
    args = interrupt_batch(baked, tmp_path, "SIGTERM", to_group=False)  # exit status 143
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    state = json.loads((tmp_path / "batch.status.json").read_text())
    assert set(state["clips"].values()) <= {"done", "skipped (finished earlier)"}, state
    for clip in ("a", "b", "c"):
        assert len(list((tmp_path / "bake" / clip).glob(f"{clip}_0*.ply"))) == 4


def test_ctrl_c_ends_every_process_of_bake_batch_with_one_line(baked, tmp_path):
    interrupt_batch(baked, tmp_path, "SIGINT", to_group=True)  # exit status 130; the clips print nothing


@pytest.mark.parametrize("second_out", ["bake/a", "bake/x/../a", "link"])  # link: a symlink to bake/a
def test_clips_sharing_an_out_folder_are_refused_before_any_clip_runs(baked, tmp_path, second_out):
    folder = tmp_path / "bake" / "a"  # clip a's default out folder
    folder.mkdir(parents=True)
    (folder / "a_000001.ply").write_bytes(b"a frame of an earlier bake")
    (tmp_path / "link").symlink_to(folder)
    manifest = batch_manifest(tmp_path, baked, [{"id": "a"}, {"id": "b", "out": second_out}])
    before = digests(folder)
    assert_refused(run_cli("bake-batch", str(manifest), "--progress", "none"),
                   f"{manifest}: clips 'a' and 'b' share the output folder {os.path.realpath(folder)}; give each "
                   f"clip its own 'out'")
    assert digests(folder) == before and sorted(p.name for p in tmp_path.iterdir()) == ["bake", "batch.json", "link"]
    assert [p.name for p in (tmp_path / "bake").iterdir()] == ["a"]


@pytest.mark.parametrize("doc, expected", [
    ({"clips": [{"id": "a", "fps": "25"}]}, "clips[0].fps must be a number, got '25'"),
    ({"clips": [{"id": "a", "camera": 5}]}, "clips[0].camera must be a string, got int"),
    ({"clips": [{"id": "a", "cameras": 5}]}, "unknown field clips[0].cameras (known: audio, avatar, background,"),
    ({"clips": [{"id": "a", "ply": "no"}]}, "clips[0].ply must be true or false, got 'no'"),
    ({"clips": [{"id": "a"}, {"id": "b", "mp4": 1}]}, "clips[1].mp4 must be true or false, got 1"),
    ({"clips": [{"id": "a", "audio": 7}]}, "clips[0].audio must be a string, got int"),
    ({"clips": [{"id": "a", "background": "white"}]}, "clips[0].background must be a list, got str"),
    ({"clips": {"a": {"fps": 25}}}, "'clips' must be a non-empty list of clip objects, got dict"),
    ({"clips": [{"id": "a"}, "b"]}, "clips[1] must be an object, got str"),
    ({"defaults": ["ply"], "clips": [{"id": "a"}]}, "defaults must be an object, got list"),
    ({"defaults": {"audio": "a.wav", "avatar": "av", "ply": "no"}, "clips": [{"id": "a"}]},
     "defaults.ply must be true or false, got 'no'"),
])
def test_a_manifest_field_of_the_wrong_json_type_is_refused_naming_it(baked, tmp_path, doc, expected):
    manifest = batch_manifest(tmp_path, baked, **doc)
    assert_refused(run_cli("bake-batch", str(manifest), "--progress", "none"), f"{manifest}: {expected}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch.json"]
