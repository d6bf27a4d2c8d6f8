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


def cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def memory_limit() -> None:
    """preexec_fn: the child's address space capped at MEMORY_LIMIT."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_cli(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m emotalker ARGS` under MEMORY_LIMIT."""
    return subprocess.run([sys.executable, "-m", "emotalker", *args], input=stdin, capture_output=True, text=True,
                          env=cli_env(), preexec_fn=memory_limit, timeout=timeout)


def worker_replies(payload: bytes) -> list[dict]:
    """Every line a real worker (under MEMORY_LIMIT) writes for `payload` followed by an `environment`
    request with id "alive", up to that request's reply; the worker must then shut down cleanly."""
    proc = subprocess.Popen([sys.executable, "-m", "emotalker", "worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=cli_env(), preexec_fn=memory_limit)
    try:
        proc.stdin.write(payload + b'\n{"id": "alive", "method": "environment"}\n')
        proc.stdin.flush()
        replies = []
        for raw in proc.stdout:
            replies.append(json.loads(raw))
            if replies[-1].get("id") == "alive":
                break
        proc.stdin.write(b'{"method": "shutdown"}\n')
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    return replies


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
    proc = subprocess.Popen([sys.executable, "-m", "emotalker", "worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=cli_env(), preexec_fn=memory_limit)
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
    replies = ask_worker([{"id": 0, "method": "configure", "params": {"read": [str(baked)], "write": [str(tmp_path)]}},
                          {"id": 1, "method": "bake", "params": {"clip": {**clip, "fps": 1e9}}},
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
    replies = worker_replies("\n".join(bad).encode())
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


# --- 6 and 8. output paths, I/O faults and command options: one line, nothing damaged -------------


def bake_into(baked: Path, out: Path, *extra: str, preexec=None) -> subprocess.CompletedProcess:
    """The fixture's bake (happy, PLY + PNG) into `out`, with `preexec` (no memory limit: file-size cases)."""
    args = bake_args(baked, "--emotion", "happy", "--ply", "--png", "--resolution", "64", *extra)
    args[args.index("--out") + 1] = str(out)
    return subprocess.run([sys.executable, "-m", "emotalker", *args], capture_output=True, text=True,
                          env=cli_env(), preexec_fn=preexec, timeout=300)


def test_an_out_that_is_a_file_is_refused_and_left_alone(baked, tmp_path):
    target = tmp_path / "take"
    target.write_text("a user's file")
    assert_refused(bake_into(baked, target), f"{target}: is a file, not a folder")
    assert target.read_text() == "a user's file"


def as_nobody() -> None:
    """preexec_fn: drop to the unprivileged user when running as root (root ignores permission bits)."""
    if os.geteuid() == 0:
        os.setgid(65534)
        os.setuid(65534)


def test_a_read_only_output_folder_is_refused_before_any_work():
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="emotalker-ro-"))  # under /tmp, so the unprivileged user can reach it
    try:
        root.chmod(0o555)
        proc = subprocess.run([sys.executable, "-m", "emotalker", "make-head", str(root / "sub" / "head.npz")],
                              capture_output=True, text=True, env=cli_env(),
                              preexec_fn=as_nobody, timeout=120)
        assert_refused(proc, f"{root}: is read-only for this user")
        assert list(root.iterdir()) == []
    finally:
        root.chmod(0o755)
        root.rmdir()


def assert_fault_leaves_whole_frames(baked: Path, out: Path, tmp_path: Path, preexec, fault: str) -> None:
    """Three frames baked, then the whole clip under an I/O fault: status 1 and one line naming a frame file
    and `fault`; the three frames unchanged, no temporary file left, and every frame file there equal to the
    same frame baked on a roomy disk."""
    assert bake_into(baked, out, "--frames", "1:3").returncode == 0
    before = digests(out)
    proc = bake_into(baked, out, preexec=preexec)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, (proc.returncode, proc.stderr[-2000:])
    assert fault in lines[0] and f"{out}/speech_0000" in lines[0] and "already written are intact" in lines[0], lines
    after = digests(out)
    assert all(after[name] == digest for name, digest in before.items() if name.startswith("speech_0"))
    assert not list(out.glob(".*.part")), sorted(os.listdir(out))
    roomy = tmp_path / "roomy"
    assert bake_into(baked, roomy).returncode == 0
    assert len(after) > len(before) - 1 and all(
        (roomy / name).read_bytes() == (out / name).read_bytes() for name in after if name.startswith("speech_0"))


def test_a_file_size_limit_mid_bake_is_one_line_and_leaves_whole_frames(baked, tmp_path):
    import signal

    def small_files() -> None:  # EFBIG on write instead of the default SIGXFSZ kill: a full disk's path
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))  # under one PLY frame of the tiny avatar (18 KB)

    assert_fault_leaves_whole_frames(baked, tmp_path / "out", tmp_path, small_files, "File too large")


def test_a_full_disk_mid_bake_is_one_line_and_leaves_whole_frames(baked, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (the file-size-limit test covers the same path)")
    try:
        assert_fault_leaves_whole_frames(baked, disk / "out", tmp_path, None, "No space left on device")
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("args, expected", [
    (["make-head", "FOLDER"], "FOLDER: is a folder; name a .npz file to write"),
    (["make-head", "OUT/h.npz", "--seed", "-1"], "--seed: the seed must be an integer in 0..4294967295, got -1"),
    (["convert-flame", "USERFILE.pkl", "FOLDER"], "FOLDER: is a folder; name a .npz file to write"),
    (["convert-flame", "USERFILE.npz", "USERFILE.npz"], "USERFILE.npz: is also the input file"),
    (["convert-flame", "USERFILE.pkl", "USERFILE.pkl"], "USERFILE.pkl: the file to write must end in .npz"),
    (["show-head", "USERFILE.pkl"], "USERFILE.pkl: the file to write must end in .png"),
    (["show-head", "OUT/h.png", "--size", "100000"], "--size must be 64..4096 pixels a panel"),
])
def test_output_files_that_are_folders_inputs_or_not_ours_are_refused(tmp_path, args, expected):
    (tmp_path / "FOLDER").mkdir()
    for name in ("USERFILE.pkl", "USERFILE.npz"):
        (tmp_path / name).write_bytes(b"a user's file")
    before = digests(tmp_path)
    fill = lambda a: a.replace("FOLDER", str(tmp_path / "FOLDER")).replace("USERFILE", str(tmp_path / "USERFILE")) \
        .replace("OUT", str(tmp_path / "out"))  # noqa: E731
    assert_refused(run_cli(*map(fill, args)), fill(expected))
    assert digests(tmp_path) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, value, expected", [
    ("--clips", "-1", "--clips must be an integer in 1..10000, got -1"),
    ("--resolution", "0", "--resolution must be an integer in 32..16384, got 0"),
    ("--duration", "-1", "--duration must be a number in 0.8..600, got -1.0"),
    ("--seed", "-5", "--seed must be an integer in 0..4294967295, got -5"),
])
def test_make_sample_checks_its_options_before_writing_anything(tmp_path, option, value, expected):
    folder = tmp_path / "data"
    assert_refused(run_cli("make-sample", str(folder), "--preset", "ci", option, value), f"{folder}: {expected}")
    assert not folder.exists()  # so that the next, good run in this folder is not blocked


def test_sub_frame_audio_still_makes_an_mp4_with_its_video(baked, tmp_path):
    import imageio_ffmpeg

    short = make_speech(tmp_path / "blip.wav", seconds=0.02)  # half a frame at 25 fps
    out = tmp_path / "out"
    proc = run_cli("bake", str(baked / "avatar"), "--audio", str(short), "--out", str(out), "--emotion", "happy",
                   "--mp4", "--resolution", "64", "--progress", "none", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(out / "blip.mp4")],
                           capture_output=True, text=True).stderr
    assert "Video: " in probe and "Audio: " in probe and "Duration: 00:00:00.04" in probe, probe


def test_files_are_written_with_the_users_umask(baked, tmp_path):
    out = tmp_path / "out"
    proc = bake_into(baked, out, "--frames", "1:2", preexec=lambda: os.umask(0o027))
    assert proc.returncode == 0, proc.stderr
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if not p.name.startswith(".emotalker-run.lock")}
    assert modes and set(modes.values()) == {0o640}, modes


# --- JSON, npz and pickle limits ---------------------------------------------------------------------


@pytest.mark.parametrize("command", ["bake", "bake-batch"])
def test_100000_deep_nested_json_is_one_line_not_a_recursion_error(baked, tmp_path, command):
    from emotalker.core.base.limits import MAX_JSON_DEPTH

    doc = tmp_path / "deep.json"
    doc.write_text("[" * 100_000 + "]" * 100_000)
    before = digests(baked / "out")
    args = (bake_args(baked, "--tracks", str(doc)) if command == "bake"
            else ["bake-batch", str(doc), "--progress", "none"])
    what = "tracks file" if command == "bake" else "batch manifest"
    assert_refused(run_cli(*args), f"{doc}: not a valid {what}: it nests 100000 levels deep, more than the limit "
                                   f"of {MAX_JSON_DEPTH}")
    assert digests(baked / "out") == before


def test_a_json_file_past_the_size_limit_is_refused_before_it_is_read(baked, tmp_path):
    from emotalker.core.base.limits import MAX_JSON_BYTES

    tracks = tmp_path / "huge.json"
    with open(tracks, "wb") as fh:
        fh.truncate(MAX_JSON_BYTES + 1)  # sparse: nothing to write, and reading it would be the bug
    assert_refused(run_cli(*bake_args(baked, "--tracks", str(tracks))),
                   f"{tracks}: tracks file is {MAX_JSON_BYTES + 1} bytes, more than the limit of {MAX_JSON_BYTES}")


def test_a_flame_pickle_whose_sparse_matrix_asks_for_298_gib_is_one_line(tmp_path):
    import pickle

    import numpy as np
    import scipy.sparse as sp

    n = 200_000  # 200,000 x 200,000 float64 made dense: 298 GiB, from a 2 MB file
    indptr = np.ones(n + 1, np.int32)
    indptr[0] = 0
    matrix = sp.csc_matrix((np.ones(1), np.zeros(1, np.int32), indptr), shape=(n, n))
    pkl = tmp_path / "flame.pkl"
    pkl.write_bytes(pickle.dumps({"J_regressor": matrix, "v_template": np.zeros((3, 3))}, protocol=2))
    out = tmp_path / "flame_model.npz"
    assert_refused(run_cli("convert-flame", str(pkl), str(out)),
                   f"{pkl}: refusing the FLAME pickle: a sparse matrix of shape (200000, 200000) would take 298.0 GiB, "
                   f"more than the limit of 1 GiB")
    assert not out.exists()


def test_a_flame_pickle_that_builds_a_huge_array_from_a_shape_is_one_line(tmp_path):
    import pickle

    class Huge:  # pickles as numpy.ndarray((10**6, 10**6)): allocated by shape, no data in the file
        def __reduce__(self):
            import numpy as np

            return np.ndarray, ((10**6, 10**6),)

    pkl = tmp_path / "flame.pkl"
    pkl.write_bytes(pickle.dumps({"shapedirs": Huge()}, protocol=2))
    assert_refused(run_cli("convert-flame", str(pkl), str(tmp_path / "o.npz")),
                   f"{pkl}: refusing the FLAME pickle: an array of shape (1000000, 1000000) would take 7450.6 GiB")


def write_npz_member(path: Path, name: str, header_shape: tuple, data: bytes) -> None:
    """An .npz whose member `name` has a .npy header declaring `header_shape` (float32) before `data`."""
    import io
    import zipfile

    import numpy as np

    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, {"descr": "<f4", "fortran_order": False, "shape": header_shape})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}.npy", npy.getvalue() + data)


def test_flame_curves_whose_npz_header_declares_a_huge_array_are_refused_before_loading(baked, tmp_path):
    curves = tmp_path / "curves.npz"
    write_npz_member(curves, "expr", (10**6, 10**6), b"\0" * 64)  # 3.6 TiB declared, 64 bytes held
    before = digests(baked / "out")
    assert_refused(run_cli(*bake_args(baked, "--emotion", "happy", "--flame-curves", str(curves))), f"{curves}: ",
                   "expr.npy declares an array of shape (1000000, 1000000) float32 (4000000000000 bytes) but holds 64")
    assert digests(baked / "out") == before


def test_an_npz_whose_arrays_exceed_the_limit_is_refused_from_its_directory(tmp_path, monkeypatch):
    import numpy as np

    from emotalker.core.base import fileio
    from emotalker.core.base.errors import InputError

    path = tmp_path / "big.npz"
    np.savez_compressed(path, a=np.zeros(1000, np.float32), b=np.zeros(1000, np.float32))  # compresses to bytes
    monkeypatch.setattr(fileio, "MAX_ARRAY_BYTES", 6000)  # the two arrays hold 8000 bytes
    with pytest.raises(InputError, match=r"big.npz: the FLAME curves file's arrays take \d+ bytes, more than the "
                                         r"limit of 6000"):
        fileio.read_npz(path, "FLAME curves")


@pytest.mark.parametrize("line, expected", [
    (b"[" * 100_000 + b"]" * 100_000, "bad request line: not a valid JSON line: it nests 100000 levels deep"),
    (b'{"id": 1, "method": "environment", "params": {"x": "' + b"y" * (2 << 20) + b'"}}',
     "bad request line: longer than 1048576 bytes"),
    (b'{"id": 1, "method": "environment\xff"}', "bad request line: not UTF-8"),
    (b'{"id": 1, "method": "bake", "params": {"run": {"max_seconds": NaN}}}',
     "bad request line: not a valid JSON line: NaN is not a JSON number"),
    (b'{"id": 1, "method": "bake", "params": {"run": {"max_seconds": 1e999}}}',
     "bad request line: not a valid JSON line: the number 1e999 is out of range"),
])
def test_the_worker_answers_a_hostile_line_with_one_protocol_error_and_keeps_serving(line, expected):
    replies = worker_replies(line)
    assert len(replies) == 3 and replies[0]["event"] == "ready", replies
    assert replies[1]["id"] is None and replies[1]["error"]["kind"] == "protocol"
    assert replies[1]["error"]["message"].startswith(expected), replies[1]
    assert replies[2]["id"] == "alive" and "result" in replies[2]


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


INTERRUPTED_FRAMES = 250


def interrupt_batch(baked: Path, tmp_path: Path, signame: str, to_group: bool) -> list[str]:
    """Start `bake-batch` on three clips, two at a time, and send it `signame` once a clip has baked a frame
    (to its process group: what Ctrl-C in a terminal does); check that it exits with the shell's status for
    the signal and one line naming the clips it stopped, that none of its processes is left and that the status
    file says which clips were interrupted. -> the command line, to run again."""
    import signal

    # Clips long enough (250 frames with a PNG each) to be still baking when the signal arrives: the
    # 4-frame clips of the other batch tests can finish before it since the renderer got fast.
    long = make_speech(tmp_path / "long.wav", seconds=INTERRUPTED_FRAMES / 25)
    clip = {"audio": str(long), "frames": f"1:{INTERRUPTED_FRAMES}", "ply": True, "png": True, "resolution": 64}
    manifest = batch_manifest(tmp_path, baked, [{"id": "a", **clip}, {"id": "b", **clip}, {"id": "c", **clip}])
    args = ["bake-batch", str(manifest), "--workers", "2", "--progress", "none", "--chunk", "1"]
    env = cli_env()
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
        assert len(list((tmp_path / "bake" / clip).glob(f"{clip}_0*.ply"))) == INTERRUPTED_FRAMES


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
