"""The resumable frame loop: kill and resume, partial frames, changed inputs, bad input mid-run, progress."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from emotalker.core.base.errors import InputError
from emotalker.core.render.gaussians import Gaussians
from emotalker.bake.ply import ply_sink
from emotalker.bake.sequence import LOCK_FILE, run_sequence
from emotalker.bake.video import png_sink

FRAMES = range(1, 9)


class Producer:
    """Deterministic frames; records which frames it made; can fail at a chosen frame."""

    def __init__(self, fail_at=None, error=RuntimeError("killed")):
        self.calls, self.fail_at, self.error = [], fail_at, error

    def __call__(self, frame):
        if frame == self.fail_at:
            raise self.error
        self.calls.append(frame)
        g = torch.Generator().manual_seed(frame)
        gaussians = Gaussians(torch.randn(30, 3, generator=g), torch.randn(30, 4, generator=g),
                              torch.randn(30, 3, generator=g), torch.randn(30, generator=g),
                              torch.randn(30, 4, 3, generator=g))
        image = np.full((6, 8, 4), frame * 20, np.uint8)
        return gaussians, image


def _sinks(out):
    return [ply_sink(out, "head", sh_degree=1, to_gaussians=lambda item: item[0]),
            png_sink(out, "head", to_image=lambda item: item[1])]


def _run(out, producer, fingerprint=None, **kw):
    return run_sequence(FRAMES, producer, _sinks(out), out_dir=out, fingerprint=fingerprint or {"tracks": "abc"},
                        progress="none", **kw)


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name.startswith("head_")}


def test_killed_run_resumes_to_identical_files(tmp_path):
    reference = tmp_path / "reference"
    _run(reference, Producer())
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="killed"):
        _run(out, Producer(fail_at=5))
    assert sorted(_snapshot(out)) == [f"head_{i:06d}.{ext}" for i in range(1, 5) for ext in ("ply", "png")]
    again = Producer()
    result = _run(out, again)
    assert again.calls == [5, 6, 7, 8]  # finished frames are skipped, not made again
    assert (result.written, result.skipped) == (4, 4)
    assert _snapshot(out) == _snapshot(reference)
    assert not list(out.glob(".*.part"))


def test_frame_with_a_missing_file_writes_only_that_file(tmp_path):
    _run(tmp_path, Producer())
    ply = tmp_path / "head_000003.ply"
    os.utime(ply, (1, 1))
    (tmp_path / "head_000003.png").unlink()
    # A temporary file left by a run killed with SIGKILL mid-write:
    (tmp_path / ".head_000004.x1y2.png.part").write_bytes(b"half")
    again = Producer()
    _run(tmp_path, again)
    assert again.calls == [3]
    assert ply.stat().st_mtime == 1  # not rewritten
    assert (tmp_path / "head_000003.png").exists()
    assert not list(tmp_path.glob(".*.part"))


def test_changed_inputs_are_refused_then_overwrite_starts_over(tmp_path):
    _run(tmp_path, Producer())
    before = _snapshot(tmp_path)
    with pytest.raises(InputError, match=r"holds 16 frame files baked from different inputs \(changed: tracks\).*--overwrite"):
        _run(tmp_path, Producer(), fingerprint={"tracks": "other"})
    assert _snapshot(tmp_path) == before
    again = Producer()
    _run(tmp_path, again, fingerprint={"tracks": "other"}, overwrite=True)
    assert again.calls == list(FRAMES)
    # Same inputs as the last run: nothing to do.
    assert _run(tmp_path, Producer(), fingerprint={"tracks": "other"}).written == 0


def test_unrecorded_frame_files_are_refused(tmp_path):
    (tmp_path / "head_000001.ply").write_bytes(b"someone else's")
    with pytest.raises(InputError, match="no bake run recorded"):
        _run(tmp_path, Producer())
    assert (tmp_path / "head_000001.ply").read_bytes() == b"someone else's"


def test_bad_input_mid_run_leaves_earlier_frames_intact(tmp_path):
    _run(tmp_path, Producer())
    before = _snapshot(tmp_path)
    for path in tmp_path.glob("head_00000[6-8].*"):
        path.unlink()
    bad = Producer(fail_at=7, error=InputError("line.wav", "silent audio at frame 7"))
    with pytest.raises(InputError, match="line.wav: silent audio at frame 7"):
        _run(tmp_path, bad)
    assert bad.calls == [6]
    after = _snapshot(tmp_path)
    assert after == {k: v for k, v in before.items() if not k.startswith(("head_000007", "head_000008"))}


def test_interrupt_during_a_write_leaves_no_partial_file(tmp_path):
    def interrupted(item, tmp):
        tmp.write_bytes(b"half a frame")
        raise KeyboardInterrupt

    from emotalker.bake.sequence import FrameSink

    sink = FrameSink("bad", tmp_path, "head_{frame:06d}.bin", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sequence(FRAMES, Producer(), [sink], out_dir=tmp_path, fingerprint={}, progress="none")
    assert not list(tmp_path.glob("head_*")) and not list(tmp_path.glob(".*.part"))


def test_json_progress_and_lock(tmp_path, capsys):
    run_sequence(range(1, 4), Producer(), _sinks(tmp_path), out_dir=tmp_path, fingerprint={}, progress="json",
                 stage="bake")
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["stage"], e["step"], e["total"]) for e in events] == [("bake", 1, 3), ("bake", 2, 3), ("bake", 3, 3)]

    fcntl = pytest.importorskip("fcntl")
    with open(tmp_path / LOCK_FILE, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(InputError, match="another bake is writing into this folder"):
            run_sequence(range(1, 4), Producer(), _sinks(tmp_path), out_dir=tmp_path, fingerprint={}, progress="none")
