"""Where the CPU renderer's time goes, phase by phase, on benchmarks/render.py's head scene.

    python benchmarks/render_phases.py [--repeats 9] [--threads 2] [--clock cpu]

Wraps the kernels that emotalker.core.render.cpu calls (by name, so a kernel the
code no longer has is simply absent from the table) with timers, renders forward
and forward + backward, and prints the median milliseconds of each phase per call:
projection + SH (forward and backward), binning (tile counting and listing),
sorting (depth order and the per-tile lists), blending forward and backward, and
gathering the per-intersection gradients; "other" is what is left (torch glue).
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import emotalker  # noqa: E402,F401  (before torch: it sets OpenMP's wait policy, docs/renderer.md)
import torch  # noqa: E402
from benchmarks.render import _render, head_scene  # noqa: E402
from emotalker.core.render import cpu, cpu_project, cpu_raster  # noqa: E402

# kernel name -> phase
PHASES = {
    "project_fwd": "project+SH fwd", "sh_fwd": "project+SH fwd",
    "project_bwd": "project+SH bwd", "sh_bwd": "project+SH bwd",
    "count_tiles": "binning", "list_tiles": "binning", "bin_and_list": "binning", "gather_isects": "tile gather",
    "tile_order": "tile gather",
    "sort_by_tile": "sort", "sort_tiles": "sort",
    "raster_fwd": "blend fwd", "raster_bwd": "blend bwd", "gather_grads": "gather",
}
WRAPPER = "bin_gaussians"   # its time minus its timed kernels is counted as "sort" (the depth argsort)

_times: dict[str, float] = collections.defaultdict(float)
_clock = [time.perf_counter]


def _wrap(module, name, phase):
    fn = getattr(module, name, None)
    if fn is None:
        return

    def timed(*a, **k):
        t0 = _clock[0]()
        try:
            return fn(*a, **k)
        finally:
            _times[phase] += _clock[0]() - t0

    setattr(module, name, timed)


def install():
    for module in (cpu_raster, cpu_project):
        for name, phase in PHASES.items():
            _wrap(module, name, phase)
    _wrap(cpu, WRAPPER, "bin")


def run(scene, grad: bool, repeats: int) -> tuple[dict[str, float], float]:
    """Median ms per phase and of the whole call."""
    per_phase, totals = collections.defaultdict(list), []
    for _ in range(repeats):
        _times.clear()
        t0 = _clock[0]()
        _render(scene, "cpu", grad)
        totals.append((_clock[0]() - t0) * 1e3)
        inner = sum(v for k, v in _times.items() if k in ("binning", "sort"))
        phases = {k: v for k, v in _times.items() if k != "bin"}
        phases["sort"] = phases.get("sort", 0.0) + max(_times.get("bin", 0.0) - inner, 0.0)
        phases["other"] = max(totals[-1] / 1e3 - sum(phases.values()), 0.0)
        for k, v in phases.items():
            per_phase[k].append(v * 1e3)
    return {k: statistics.median(v) for k, v in per_phase.items()}, statistics.median(totals)


ORDER = ("project+SH fwd", "binning", "sort", "tile gather", "blend fwd", "blend bwd", "gather", "project+SH bwd",
         "other")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None, help="torch and numba threads (default: torch's)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: process CPU time (all threads), steadier than wall time on a busy machine")
    args = ap.parse_args(argv)
    _clock[0] = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    install()
    cases = [("fwd 512x512 50k", head_scene(50_000, 512), False),
             ("fwd+bwd 256x256 20k", head_scene(20_000, 256), True)]
    for _, scene, grad in cases:
        _render(scene, "cpu", grad)   # compile or load the cache
    print(f"load average {os.getloadavg()[0]:.2f}, torch threads {torch.get_num_threads()}, {args.clock} time (ms)")
    results = [(label, *run(scene, grad, args.repeats)) for label, scene, grad in cases]
    print(f"{'phase':18s}" + "".join(f"{label:>22s}" for label, _, _ in results))
    for phase in ORDER:
        print(f"{phase:18s}" + "".join(f"{p.get(phase, 0.0):22.1f}" for _, p, _ in results))
    print(f"{'total':18s}" + "".join(f"{t:22.1f}" for _, _, t in results))
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
