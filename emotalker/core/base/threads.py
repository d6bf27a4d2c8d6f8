"""A run's CPU thread count, and the one-thread regions that keep its frames independent of it.

A bake must write the same bytes whatever `--threads` is (a farm's nodes have different
core counts; a resumed clip may finish on another node). Two kinds of parallel work:

- our numba kernels (`inference_kernels`, the CPU renderer) give each output element to
  one thread, which computes it in a fixed order: their thread count changes only the speed;
- torch's library code (MKL/oneDNN matrix products and convolutions, long sums) splits a
  reduction across threads in an order that depends on their count. The bake's models are
  small, so they run on one torch thread (`single_threaded`) and a fixed order, while the
  kernels they call keep the run's thread count (`kernel_threads`).

See docs/architecture.md, "Determinism", for what is and is not guaranteed.
"""

from __future__ import annotations

import contextlib
import threading

import torch

_state = threading.local()  # .outer: the thread count outside the current single-threaded region


def use_threads(threads: int | None) -> None:
    """Apply a run's `--threads` (None: torch's default) to torch and to numba's kernels, before any work."""
    if threads is not None:
        torch.set_num_threads(threads)
    _set_numba_threads()


def kernel_threads() -> int:
    """How many threads our numba kernels use: the run's torch thread count, also inside `single_threaded`."""
    return getattr(_state, "outer", None) or torch.get_num_threads()


@contextlib.contextmanager
def kernel_launch():
    """Around launching numba kernels: numba on `kernel_threads`, and torch's thread count put back afterwards
    (the two may share one OpenMP runtime, whose count numba's first launch resets)."""
    threads = torch.get_num_threads()
    _set_numba_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _set_numba_threads() -> None:
    import numba

    numba.set_num_threads(max(1, min(kernel_threads(), numba.config.NUMBA_NUM_THREADS)))


@contextlib.contextmanager
def single_threaded():
    """Run torch on one thread inside, so that its library reductions take one order on any machine and
    for any `--threads`; regions nest."""
    if getattr(_state, "outer", None):
        yield
        return
    _state.outer = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(_state.outer)
        _state.outer = None
