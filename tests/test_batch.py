"""Batch machinery: clips in parallel processes, failures with reasons, resuming.

The per-clip job here is a small fake defined in this file: the test is of the
batch runner, not of baking.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from emotalker.core.base.errors import InputError
from emotalker.bake.batch import load_manifest, run_batch


def fake_clip_job(clip):
    """Pretend to bake: note when and in which process, fail on request (an emotion 'fail:input' or 'fail:bug')."""
    start = time.time()
    if clip.spec.emotion == "fail:input":
        raise InputError(clip.spec.audio, "audio is silent")
    if clip.spec.emotion == "fail:bug":
        raise ZeroDivisionError("division by zero")
    time.sleep(1.0)
    clip.out.mkdir(parents=True, exist_ok=True)
    record = {"pid": os.getpid(), "start": start, "end": time.time(), "audio": clip.spec.audio}
    with open(clip.out / "runs.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    return {"frames": 3}


def _manifest(tmp_path, clips, defaults=None):
    path = tmp_path / "batch.json"
    defaults = defaults or {"avatar": "avatar", "ply": True}
    path.write_text(json.dumps({"format": "emotalker-batch/1", "defaults": defaults, "clips": clips}))
    return path


def _runs(tmp_path, clip_id):
    path = tmp_path / "bake" / clip_id / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_two_clips_run_in_parallel_processes(tmp_path):
    manifest = _manifest(tmp_path, [{"id": "a", "audio": "a.wav"}, {"audio": "sub/b.wav"}])
    summary = run_batch(manifest, fake_clip_job, workers=2, progress="none")
    assert sorted(summary.done) == ["a", "b"] and not summary.failed and summary.exit_code == 0
    (a,), (b,) = _runs(tmp_path, "a"), _runs(tmp_path, "b")
    assert a["pid"] != b["pid"] != os.getpid()
    assert a["start"] < b["end"] and b["start"] < a["end"]  # the two clips overlapped in time
    assert a["audio"] == str(tmp_path / "a.wav")  # relative paths resolve against the manifest
    # Resume: both finished, nothing runs again.
    again = run_batch(manifest, fake_clip_job, workers=2, progress="none")
    assert sorted(again.skipped) == ["a", "b"] and not again.done
    assert len(_runs(tmp_path, "a")) == 1


def test_failures_are_summarised_and_retried(tmp_path):
    clips = [{"id": "good", "audio": "g.wav"}, {"id": "silent", "audio": "s.wav", "emotion": "fail:input"},
             {"id": "buggy", "audio": "x.wav", "emotion": "fail:bug"}]
    manifest = _manifest(tmp_path, clips)
    summary = run_batch(manifest, fake_clip_job, workers=2, progress="none")
    assert summary.done == ["good"] and summary.exit_code == 1
    assert summary.failed["silent"] == f"{tmp_path / 's.wav'}: audio is silent"
    assert summary.failed["buggy"].startswith("ZeroDivisionError: division by zero (at test_batch.py:")
    report = summary.report()
    assert "1 clips baked, 0 already finished, 2 failed" in report and "FAILED silent" in report
    status = json.loads((tmp_path / "batch.status.json").read_text())
    assert status["clips"] == {"good": "done", "silent": "failed", "buggy": "failed"}
    # Fix the manifest: the failed clips run again, the finished one does not.
    clips[1].pop("emotion")
    clips[2].pop("emotion")
    manifest = _manifest(tmp_path, clips)
    again = run_batch(manifest, fake_clip_job, workers=2, progress="none")
    assert sorted(again.done) == ["buggy", "silent"] and again.skipped == ["good"] and again.exit_code == 0
    assert len(_runs(tmp_path, "good")) == 1


def test_changed_clip_fields_run_again(tmp_path):
    run_batch(_manifest(tmp_path, [{"id": "a", "audio": "a.wav"}]), fake_clip_job, workers=1, progress="none")
    summary = run_batch(_manifest(tmp_path, [{"id": "a", "audio": "a.wav", "emotion": "sad"}]), fake_clip_job,
                        workers=1, progress="none")
    assert summary.done == ["a"] and len(_runs(tmp_path, "a")) == 2


def test_manifest_clips_are_read_as_complete_clip_specs(tmp_path):
    from emotalker.bake.clip import ClipSpec

    manifest = _manifest(tmp_path, [{"id": "a", "audio": "a.wav", "fps": 25, "frames": "1:4"},
                                    {"id": "b", "audio": "b.wav", "png": True, "name": "line_b", "out": "/abs/b"}],
                         defaults={"avatar": "av", "background": [0, 0, 0]})
    a, b = load_manifest(manifest)
    assert a.spec == ClipSpec(avatar=str(tmp_path / "av"), audio=str(tmp_path / "a.wav"),
                              out=str(tmp_path / "bake" / "a"), fps=25.0, frames="1:4", name="a", ply=True,
                              background=(0.0, 0.0, 0.0))
    assert (b.spec.name, b.spec.ply, b.spec.png, b.out) == ("line_b", False, True, Path("/abs/b"))
    # The resume digest is of the fields as given, so finished clips stay finished across this change.
    assert a.fields == {"avatar": str(tmp_path / "av"), "background": [0, 0, 0], "audio": str(tmp_path / "a.wav"),
                        "fps": 25, "frames": "1:4", "out": str(tmp_path / "bake" / "a")}


@pytest.mark.parametrize("doc, message", [
    ({"format": "emotalker-batch/2", "clips": []}, "format is 'emotalker-batch/2'"),
    ({"format": "emotalker-batch/1", "clips": []}, "'clips' must be a non-empty list"),
    ({"format": "emotalker-batch/1", "clips": [{"id": "a"}]}, "clip 0 \\(a\\) has no 'audio' path"),
    ({"format": "emotalker-batch/1", "defaults": {"avatar": "av"}, "clips": [{"audio": "a.wav"}, {"audio": "x/a.wav"}]},
     "id 'a' appears twice"),
    ({"format": "emotalker-batch/1", "clips": [{"id": "a b", "audio": "a.wav"}]}, "id 'a b' must be letters"),
    # Clip fields are a ClipSpec's: one error naming the field (and the file, checked below).
    ({"format": "emotalker-batch/1", "clips": [{"audio": "a.wav", "avatar": "av"}, {"audio": "b.wav", "avatar": "av",
                                                                                  "fsp": 25}]},
     "unknown field clips\\[1\\].fsp \\(known: audio, avatar, background, camera,"),
    ({"format": "emotalker-batch/1", "clips": [{"audio": "a.wav", "avatar": "av", "fps": "fast"}]},
     "clips\\[0\\].fps must be a number, got 'fast'"),
    ({"format": "emotalker-batch/1", "clips": [{"audio": "a.wav", "avatar": "av", "ply": "yes"}]},
     "clips\\[0\\].ply must be true or false, got 'yes'"),
    ({"format": "emotalker-batch/1", "clips": [{"audio": "a.wav", "avatar": "av", "tracks": 3}]},
     "clips\\[0\\].tracks must be a string, got int"),
    ({"format": "emotalker-batch/1", "clips": [{"audio": "a.wav"}]}, "missing field clips\\[0\\].avatar"),
    ({"format": "emotalker-batch/1", "defaults": {"avatar": "av", "devise": "cpu"}, "clips": [{"audio": "a.wav"}]},
     "unknown field defaults.devise"),
    # How a clip runs is the command line's (RunOptions), not the manifest's.
    ({"format": "emotalker-batch/1", "clips": [{"audio": "a.wav", "avatar": "av", "device": "cuda"}]},
     "unknown field clips\\[0\\].device"),
])
def test_bad_manifests(tmp_path, doc, message):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=message) as err:
        load_manifest(path)
    assert str(err.value).startswith(str(path))


def lost_until_third_job(clip):
    """Lose the clip's process (exit without a result) on its first two runs; bake on the third."""
    clip.out.mkdir(parents=True, exist_ok=True)
    attempts = clip.out / "attempts"
    n = int(attempts.read_text()) + 1 if attempts.exists() else 1
    attempts.write_text(str(n))
    if n < 3:
        os._exit(3)
    return {"written": 2, "skipped": 1}


@pytest.mark.parametrize("max_retries, done", [(1, False), (2, True)])
def test_max_retries_bounds_the_runs_of_a_lost_clip(tmp_path, capsys, max_retries, done):
    manifest = _manifest(tmp_path, [{"id": "a", "audio": "a.wav"}])
    summary = run_batch(manifest, lost_until_third_job, progress="json", max_retries=max_retries)
    lost = "worker process lost (exit status 3 without a result)"
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    if done:
        assert summary.done == ["a"] and summary.retried == {"a": f"{lost}; {lost}"} and summary.frames == 3
        assert "RETRIED a 2 times" in summary.report()
        assert lines == [{"stage": "bake-batch", "clip": "a", "state": "retried", "step": 0, "total": 1, "reason": lost}] * 2 \
            + [{"stage": "bake-batch", "clip": "a", "state": "done", "step": 1, "total": 1, "frames": 3}]
    else:
        assert summary.failed == {"a": f"{lost}, on its retry too"} and summary.exit_code == 1
        assert [line["state"] for line in lines] == ["retried", "failed"]
    # The summary is also a JSON file beside the manifest.
    assert json.loads((tmp_path / "batch.summary.json").read_text()) == summary.to_dict()
    assert summary.to_dict()["engine"] == "local"


def test_one_clip_of_a_manifest_alone(tmp_path):
    manifest = _manifest(tmp_path, [{"id": "a", "audio": "a.wav"}, {"id": "b", "audio": "b.wav"}])
    summary = run_batch(manifest, fake_clip_job, progress="none", only=1)
    assert summary.done == ["b"] and not _runs(tmp_path, "a")
    # Tasks of one manifest run at once on a farm: each writes its own status and summary.
    assert json.loads((tmp_path / "batch.b.status.json").read_text())["clips"] == {"b": "done"}
    assert json.loads((tmp_path / "batch.b.summary.json").read_text())["done"] == ["b"]
    with pytest.raises(InputError, match=r"--clip-index: must be 0..1 .* got 2"):
        run_batch(manifest, fake_clip_job, progress="none", only=2)


def test_the_ray_engine_without_ray_is_one_line(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the farm extra were not installed
    manifest = _manifest(tmp_path, [{"id": "a", "audio": "a.wav"}])
    with pytest.raises(InputError, match=r"--engine: ray is not installed: pip install 'emotalker\[farm\]'"):
        run_batch(manifest, fake_clip_job, progress="none", engine="ray")


def test_a_ray_address_nobody_answers_is_one_line(tmp_path):
    pytest.importorskip("ray", reason="the farm extra (ray) is not installed")
    import socket

    from emotalker.bake.farm import RayOptions

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manifest = _manifest(tmp_path, [{"id": "a", "audio": "a.wav"}])
    with pytest.raises(InputError, match=rf"--address: no Ray cluster answers at 127.0.0.1:{port}"):
        run_batch(manifest, fake_clip_job, progress="none", engine="ray", ray=RayOptions(address=f"127.0.0.1:{port}"))
    with pytest.raises(InputError, match="--address: expected auto or HOST:PORT, got 'nowhere'"):
        run_batch(manifest, fake_clip_job, progress="none", engine="ray", ray=RayOptions(address="nowhere"))
