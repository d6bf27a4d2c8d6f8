"""Speed of the CPU renderer on a head-like scene, against the torch reference in the same run.

    python benchmarks/render.py --json out.json

Figures (medians over repeats; each is also reported per round, since other
processes may share the cores):
  cpu_fwd_ms_512_50k           forward, 512x512, 50,000 Gaussians          (goal <= 100 ms)
  cpu_fwdbwd_ms_256_20k        forward + backward, 256x256, 20,000          (goal <= 120 ms)
  speedup_vs_reference_128_5k  reference / cpu, forward + backward, 128x128, 5,000 (goal >= 20)

The scene: Gaussians on the front of an ellipsoid the size of a head (FLAME space,
metres, +Y up, +Z out of the face), flattened along the surface normal with
tangent scales about the spacing between neighbours, SH degree 3, seen by a
camera 0.5 m in front whose focal length makes the head fill ~80% of the image.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emotalker.core.render import rasterize  # noqa: E402

HEAD_AXES = (0.075, 0.10, 0.09)   # ellipsoid semi-axes, metres (x, y, z)
CAMERA_DISTANCE = 0.5


def rotmat_to_quat(r: torch.Tensor) -> torch.Tensor:
    """wxyz quaternions [N,4] of rotation matrices [N,3,3] (branch-free via the largest pivot)."""
    m = r
    t = torch.stack([1 + m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2],
                     1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], 1)
    k = t.argmax(1)
    cand = torch.stack([
        torch.stack([t[:, 0], m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], 1),
        torch.stack([m[:, 2, 1] - m[:, 1, 2], t[:, 1], m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0]], 1),
        torch.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], t[:, 2], m[:, 1, 2] + m[:, 2, 1]], 1),
        torch.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1], t[:, 3]], 1),
    ], 1)
    q = cand[torch.arange(len(k)), k]
    return q / q.norm(dim=1, keepdim=True)


def head_scene(n: int, size: int, seed: int = 0):
    """Head-like Gaussians and one camera. Returns a dict of rasterize() arguments (SH degree 3)."""
    g = torch.Generator().manual_seed(seed)
    ax = torch.tensor(HEAD_AXES)
    # front of the ellipsoid (z >= -0.25 of its depth), uniform over direction
    dirs = torch.randn(n * 3, 3, generator=g)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    dirs = dirs[dirs[:, 2] > -0.25][:n]
    normals = dirs / ax**2
    normals = normals / normals.norm(dim=1, keepdim=True)
    means = dirs * ax + normals * 0.001 * torch.randn(n, 1, generator=g)
    area = 2.5 * math.pi * (ax[0] * ax[1] * ax[2]) ** (2 / 3)          # ~ the front's area
    spacing = math.sqrt(float(area) / n)
    tangent = torch.exp(torch.randn(n, 2, generator=g) * 0.35) * spacing * 0.7
    normal_scale = tangent.min(1, keepdim=True).values * 0.15
    scales = torch.cat([tangent, normal_scale], 1)
    # frame: columns t1, t2, n with a random twist about the normal
    helper = torch.where(normals[:, 1:2].abs() < 0.9, torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]))
    t1 = torch.nn.functional.normalize(torch.cross(helper, normals, dim=1), dim=1)
    t2 = torch.cross(normals, t1, dim=1)
    ang = torch.rand(n, 1, generator=g) * 2 * math.pi
    t1, t2 = t1 * ang.cos() + t2 * ang.sin(), t2 * ang.cos() - t1 * ang.sin()
    quats = rotmat_to_quat(torch.stack([t1, t2, normals], 2))
    opacities = torch.sigmoid(torch.randn(n, generator=g) * 1.5 + 1.5)
    sh = torch.randn(n, 16, 3, generator=g) * 0.05
    sh[:, 0] = (torch.rand(n, 3, generator=g) * 0.6 + 0.2 - 0.5) / 0.28209479177387814
    # OpenCV camera on +Z looking at the face: x right, y down, z forward
    viewmat = torch.tensor([[1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, -1.0, CAMERA_DISTANCE], [0, 0, 0, 1.0]])
    focal = 0.8 * size * (CAMERA_DISTANCE - ax[2].item()) / (2 * ax[1].item())
    K = torch.tensor([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]])
    return dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=sh,
                viewmats=viewmat[None], Ks=K[None], width=size, height=size, sh_degree=3)


def _render(scene, backend, grad: bool):
    ins = {k: (v.detach().requires_grad_(grad) if k in ("means", "quats", "scales", "opacities", "colors") else v)
           for k, v in scene.items()}
    if not grad:
        with torch.no_grad():
            return rasterize(**ins, backend=backend)
    out = rasterize(**ins, backend=backend)
    (out.rgb.sum() + 0.1 * out.alpha.sum() + 0.01 * out.depth.sum()).backward()
    return out


def time_ms(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def measure(name, fn, rounds: int, repeats: int, report: dict) -> float:
    medians = [statistics.median(time_ms(fn, repeats)) for _ in range(rounds)]
    report[name + "_round_medians"] = [round(m, 2) for m in medians]
    value = statistics.median(medians)
    print(f"{name:32s} {value:9.1f} ms   (round medians: {', '.join(f'{m:.1f}' for m in medians)})", flush=True)
    return value


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the figure is the median of round medians")
    ap.add_argument("--repeats", type=int, default=7, help="timed calls a round")
    ap.add_argument("--reference-repeats", type=int, default=3, help="timed reference calls (they take seconds)")
    args = ap.parse_args(argv)

    import numba
    report: dict = {"torch_threads": torch.get_num_threads(), "numba_threads": numba.get_num_threads(),
                    "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                    "note": "wall-clock medians on a shared machine; other processes may use the same cores"}
    big, mid, small = head_scene(50_000, 512), head_scene(20_000, 256), head_scene(5_000, 128)

    t0 = time.perf_counter()
    _render(small, "cpu", grad=True)            # compiles (or loads numba's cache) every kernel
    report["first_call_s"] = round(time.perf_counter() - t0, 2)
    print(f"first call (numba compile or cache load): {report['first_call_s']} s", flush=True)
    for scene in (big, mid):
        _render(scene, "cpu", grad=True)
    out = _render(big, "cpu", grad=False)
    report["coverage_512_50k"] = round(float(out.alpha.mean()), 3)
    report["visible_512_50k"] = int((out.radii > 0).sum())

    report["cpu_fwd_ms_512_50k"] = measure("cpu_fwd_ms_512_50k", lambda: _render(big, "cpu", False),
                                           args.rounds, args.repeats, report)
    report["cpu_fwdbwd_ms_256_20k"] = measure("cpu_fwdbwd_ms_256_20k", lambda: _render(mid, "cpu", True),
                                              args.rounds, args.repeats, report)
    cpu_small = measure("cpu_fwdbwd_ms_128_5k", lambda: _render(small, "cpu", True), args.rounds, args.repeats,
                        report)
    ref_small = measure("reference_fwdbwd_ms_128_5k", lambda: _render(small, "reference", True), 1,
                        args.reference_repeats, report)
    report["cpu_fwdbwd_ms_128_5k"] = cpu_small
    report["reference_fwdbwd_ms_128_5k"] = ref_small
    report["speedup_vs_reference_128_5k"] = round(ref_small / cpu_small, 1)
    print(f"speedup_vs_reference_128_5k      {report['speedup_vs_reference_128_5k']:9.1f} x")
    goals = {"cpu_fwd_ms_512_50k": ("<=", 100), "cpu_fwdbwd_ms_256_20k": ("<=", 120),
             "speedup_vs_reference_128_5k": (">=", 20)}
    for key, (op, goal) in goals.items():
        ok = report[key] <= goal if op == "<=" else report[key] >= goal
        print(f"  {key}: {report[key]:.1f} (goal {op} {goal}) {'met' if ok else 'NOT met'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in report.items()},
                                        indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
