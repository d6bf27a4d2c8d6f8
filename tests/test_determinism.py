"""A bake writes the same bytes whatever its thread count, and on a cold kernel cache as on a warm one.

Each bake runs in its own process (`python -m emotalker bake`), so that its thread count and
numba's kernel cache are fresh: once on an empty NUMBA_CACHE_DIR (the kernels are compiled in
that run, as on the first bake after installing), then with that cache warm on 1 and 2 threads.
Every frame file (PLY and PNG) must match byte for byte. See emotalker/core/base/threads.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bake_fixture import make_speech, make_tiny_avatar

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, Path]:
    """(avatar, speech): the tiny avatar with A2E and Stage 2, and 1.2 s of speech (30 frames)."""
    root = tmp_path_factory.mktemp("determinism")
    return make_tiny_avatar(root / "avatar", emotion=True), make_speech(root / "speech.wav", seconds=1.2, seed=4)


def bake(clip: tuple[Path, Path], out: Path, kernel_cache: Path, threads: int | None) -> dict[str, bytes]:
    """Bake `clip` (happy at intensity 2, PLY and PNG) in a fresh process -> {frame file name: bytes}."""
    avatar, speech = clip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "NUMBA_CACHE_DIR": str(kernel_cache)}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env.pop(var, None)  # the default count when `threads` is None, whatever the test runner set
    args = [str(avatar), "--audio", str(speech), "--out", str(out), "--emotion", "happy", "--intensity", "2",
            "--ply", "--png", "--resolution", "48", "--progress", "none"]
    if threads is not None:
        args += ["--threads", str(threads)]
    proc = subprocess.run([sys.executable, "-m", "emotalker", "bake", *args], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    frames = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix in (".ply", ".png")}
    assert len(frames) == 60, sorted(frames)
    return frames


def kernel_indexes(cache: Path, module: str) -> list[str]:
    """The numba cache index files of `module`'s kernels under a NUMBA_CACHE_DIR."""
    return sorted(p.name for p in cache.rglob(f"{module}.*.nbi"))


def test_frames_are_byte_identical_across_thread_counts_and_a_cold_kernel_cache(clip, tmp_path):
    cache = tmp_path / "numba_cache"
    cache.mkdir()
    cold = bake(clip, tmp_path / "cold", cache, threads=None)
    # The cold run really compiled our kernels into the empty cache (numba did not load them from elsewhere).
    assert kernel_indexes(cache, "inference_kernels") and kernel_indexes(cache, "cpu_raster")

    one = bake(clip, tmp_path / "one", cache, threads=1)
    two = bake(clip, tmp_path / "two", cache, threads=2)
    differ = {run: [name for name, data in cold.items() if frames[name] != data]
              for run, frames in (("1 thread", one), ("2 threads", two))}
    assert differ == {"1 thread": [], "2 threads": []}, "frames that differ from the cold-cache run"
    assert cold["speech_000001.ply"] != cold["speech_000030.ply"]  # the frames really move


def test_single_threaded_region_runs_torch_on_one_thread_and_the_kernels_on_the_runs_count():
    import torch

    from emotalker.core.base.threads import kernel_threads, single_threaded

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        with single_threaded():
            assert torch.get_num_threads() == 1 and kernel_threads() == 3
            with single_threaded():  # nested: still the outer count for the kernels
                assert torch.get_num_threads() == 1 and kernel_threads() == 3
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 3 and kernel_threads() == 3
    finally:
        torch.set_num_threads(before)
